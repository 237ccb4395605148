"""Building SAM 2 for stage 2: configs as SAM 2's builder composes them, strict checkpoints,
frames decoded as SAM 2 decodes them, and clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from oracles.sam2_reference import build_reference_predictor
from sam2.utils.misc import load_video_frames

from rvos.masks import RunLengthMasks
from stage2_sam2_refine.build import (
    SAM2_MODEL_CONFIGS,
    build_sam2_predictor,
    explain_missing_extension,
    hydra_overrides,
    instantiate_sam2,
    load_sam2_checkpoint,
    resolve_sam2_config,
    sam2_config_location,
)
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor, load_frames
from stage2_sam2_refine.refine import Refiner, _mask_at
from stage2_sam2_refine.sam2_tracker import Sam2Tracker


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> Path:
    return fixtures_dir / "sam2_tiny"


@pytest.mark.parametrize("name", sorted(SAM2_MODEL_CONFIGS))
def test_named_config_is_read_from_the_sam2_package(name: str):
    assert sam2_config_location(name) == (None, SAM2_MODEL_CONFIGS[name])
    assert resolve_sam2_config(name).is_file()


def test_settings_become_hydra_overrides():
    settings = {"_target_": "a.B", "fill_hole_area": 8, "x": {"y": -1e9, "z": 0.1, "on": True}}
    assert hydra_overrides({**settings, "none": None}) == [
        "++model._target_=a.B",
        "++model.fill_hole_area=8",
        "++model.x.y=-1000000000.0",
        "++model.x.z=0.1",
        "++model.x.on=true",
        "++model.none=null",
    ]


def _settings(module: torch.nn.Module) -> dict:
    """A module's plain hyper-parameters (its attributes that are bools, numbers or strings)."""
    return {k: v for k, v in vars(module).items() if isinstance(v, bool | int | float | str)}


@pytest.mark.slow
def test_predictor_is_built_as_sam2_builds_it(tiny: Path):
    """Ours and SAM 2's own ``build_sam2_video_predictor`` (default options) configure the same
    model; overrides reach the constructor, after SAM 2's video options unless they set them."""
    ours = build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    theirs = build_reference_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    assert _settings(ours) == _settings(theirs)
    assert _settings(ours.sam_mask_decoder) == _settings(theirs.sam_mask_decoder)
    assert ours.fill_hole_area == 8 and ours.sam_mask_decoder.dynamic_multimask_via_stability

    plain = instantiate_sam2(
        tiny / "tiny_sam2.1.yaml",
        apply_postprocessing=False,
        overrides={"max_obj_ptrs_in_encoder": 3},
    )
    assert plain.fill_hole_area == 0 and not plain.sam_mask_decoder.dynamic_multimask_via_stability
    assert plain.max_obj_ptrs_in_encoder == 3 != ours.max_obj_ptrs_in_encoder


def test_unknown_model_is_rejected():
    with pytest.raises(FileNotFoundError, match="sam2.1_hiera_l"):
        resolve_sam2_config("sam2.1_hiera_xl")
    assert resolve_sam2_config("sam2.1_hiera_b+").name == "sam2.1_hiera_b+.yaml"


def test_missing_checkpoint_names_download_script(tiny: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="download_ckpts.sh"):
        build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tmp_path / "sam2.1_hiera_large.pt")


@pytest.mark.slow
def test_checkpoint_loads_strictly(tiny: Path, tmp_path: Path):
    predictor = build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    assert type(predictor) is SharedFeatureVideoPredictor and not predictor.training
    state = torch.load(tiny / "weights_quiet.pt", map_location="cpu", weights_only=True)["model"]
    for name, value in predictor.state_dict().items():
        assert torch.equal(value, state[name]), name

    bad = dict(state)
    bad.pop(next(iter(bad)))
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="1 missing key.*1 unexpected key"):
        load_sam2_checkpoint(predictor, tmp_path / "bad.pt")
    torch.save(state, tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="not a SAM 2 checkpoint"):
        load_sam2_checkpoint(predictor, tmp_path / "flat.pt")


def test_a_missing_sam2_extension_is_said_once_in_one_line(caplog, monkeypatch):
    """Without sam2._C, hole filling is skipped: one line of ours (a warning on a GPU) replaces
    sam2's multi-line warning; with the extension or without hole filling, nothing is said."""
    sam2_warning = "cannot import name '_C' from 'sam2' (/site-packages/sam2/__init__.py)\n\nSkip"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for device, level in (("cpu", logging.INFO), ("cuda:0", logging.WARNING)):
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
            warnings.simplefilter("always")
            assert explain_missing_extension(8, torch.device(device))
            warnings.warn(sam2_warning, UserWarning, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["another warning"]
        (record,) = [r for r in caplog.records if "hole" in r.getMessage()]
        assert record.levelno == level and "up to 8 px" in record.getMessage()
        assert ("SAM2_BUILD_CUDA=1" in record.getMessage()) == (device != "cpu")

    caplog.clear()
    assert not explain_missing_extension(0, torch.device("cuda:0"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not explain_missing_extension(8, torch.device("cuda:0"))
        warnings.warn(sam2_warning, UserWarning, stacklevel=1)
    assert len(caught) == 1 and not caplog.records


def test_frames_are_decoded_as_sam2_decodes_them(fixtures_dir: Path):
    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    theirs, height, width = load_video_frames(
        str(folder), image_size=64, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    frames = sorted(folder.glob("*.jpg"))
    ours, h, w = load_frames(frames, 64)
    assert (h, w) == (height, width) == (540, 960)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.equal((ours - mean) / std, theirs)


@pytest.mark.slow
def test_decoded_images_give_the_frames_of_their_files(tiny: Path, fixtures_dir: Path):
    """PIL images already in memory (e.g. decoded from an mp4) load bit-identically to the files
    they came from."""
    from PIL import Image

    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    paths = sorted(folder.glob("*.jpg"))[:4]
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    from_files, height, width = load_frames(paths, 64)
    from_images, h, w = load_frames(images, 64)
    assert (h, w) == (height, width) == (540, 960)
    assert torch.equal(from_images, from_files)

    predictor = build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    sessions = [predictor.open_video(frames, video_id="videoA") for frames in (paths, images)]
    assert torch.equal(sessions[0].images, sessions[1].images)
    assert sessions[0].size == sessions[1].size
    with pytest.raises(ValueError, match="'videoX': frame #1 is 10x20"):
        load_frames([images[0], Image.new("RGB", (10, 20))], 32, video_id="videoX")


def test_unreadable_or_odd_frames_name_the_video(tmp_path: Path, fixtures_dir: Path):
    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    with pytest.raises(OSError, match="videoX"):
        load_frames([folder / "00000.jpg", tmp_path / "missing.jpg"], 32, video_id="videoX")
    from PIL import Image

    Image.new("RGB", (10, 20)).save(tmp_path / "small.jpg")
    with pytest.raises(ValueError, match="videoX"):
        load_frames([folder / "00000.jpg", tmp_path / "small.jpg"], 32, video_id="videoX")


@pytest.mark.slow
def test_refine_checks_shapes_and_skips_sam2_without_kept_query(
    tiny: Path, fixtures_dir: Path, default_config
):
    predictor = build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    refiner = Refiner(Sam2Tracker(predictor, default_config.stage2), default_config.stage2)
    frames = sorted((fixtures_dir / "refine_tiny/mevis/JPEGImages/videoA").glob("*.jpg"))[:3]
    session = refiner.open_video(frames, video_id="videoA")
    scores = np.full((3, 2), 0.1, dtype=np.float32)
    boxes = np.zeros((3, 2, 4), dtype=np.float32)
    masks = np.zeros((3, 2, 540, 960), dtype=bool)
    result = refiner.refine(session, scores=scores, boxes=boxes, masks=masks, exp_id="7")
    assert result.masks.shape == (3, 0, 540, 960)
    assert not session.video.features  # SAM 2 never ran
    with pytest.raises(ValueError, match="video 'videoA', expression '7'"):
        refiner.refine(session, scores=scores[:2], boxes=boxes, masks=masks, exp_id="7")
    with pytest.raises(ValueError, match="frame size 960x540"):
        refiner.refine(session, scores=scores, boxes=boxes, masks=masks[..., :10], exp_id="7")


def test_prompt_masks_read_from_run_length_stack():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(4, 3, 6, 7)) > 0.5
    encoded = RunLengthMasks.encode(masks)
    for frame_idx, query in [(0, 0), (2, 1), (3, 2)]:
        np.testing.assert_array_equal(_mask_at(encoded, frame_idx, query), masks[frame_idx, query])
        np.testing.assert_array_equal(_mask_at(masks, frame_idx, query), masks[frame_idx, query])


class _OutOfMemoryOnce(Refiner):
    """Raises CUDA out-of-memory on expression "b" unless the video was reopened offloaded."""

    def refine(self, session, *, scores, boxes, masks, exp_id="", on_frame=None):
        if exp_id == "b" and not session.video.offload_state_to_cpu:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().refine(
            session, scores=scores, boxes=boxes, masks=masks, exp_id=exp_id, on_frame=on_frame
        )


@pytest.mark.slow
def test_out_of_memory_retries_the_video_offloaded(tiny, fixtures_dir, caplog, default_config):
    predictor = build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_quiet.pt")
    frames = sorted((fixtures_dir / "refine_tiny/mevis/JPEGImages/videoA").glob("*.jpg"))[:2]
    props = SimpleNamespace(
        scores=np.zeros((2, 1), np.float32),
        boxes=np.zeros((2, 1, 4), np.float32),
        masks=np.zeros((2, 1, 540, 960), bool),
    )
    expressions = {"a": props, "b": props, "c": props}
    with caplog.at_level(logging.WARNING, logger="stage2_sam2_refine.refine"):
        done = [
            e
            for e, _ in _OutOfMemoryOnce(
                Sam2Tracker(predictor, default_config.stage2), default_config.stage2
            ).refine_video(frames, expressions, video_id="videoZ")
        ]
    assert done == ["a", "b", "c"]
    assert "videoZ" in caplog.text and "expression b" in caplog.text

    no_retry = dataclasses.replace(default_config.stage2, retry_offloaded_on_oom=False)
    strict = _OutOfMemoryOnce(Sam2Tracker(predictor, no_retry), no_retry)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(strict.refine_video(frames, expressions, video_id="videoZ"))
