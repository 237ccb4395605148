"""SharedFeatureVideoPredictor around sam2: the sam2 release it was written for, the frames a
pass visits, and clearing memories around a new prompt (``clear_non_cond_mem_around_input``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.sam2_reference import build_reference_predictor
from sam2 import sam2_video_predictor

from stage2_sam2_refine import predictor as predictor_module
from stage2_sam2_refine.build import build_sam2_predictor
from stage2_sam2_refine.predictor import (
    SAM2_VERSION,
    SharedFeatureVideoPredictor,
    VideoSession,
    check_sam2_compatibility,
    installed_sam2_version,
)
from stage2_sam2_refine.tracker import propagation_order

NUM_FRAMES = 24  # the first frames of videoA
PROMPT_FRAME = 10  # both objects are prompted here first


def _build(fixtures_dir: Path, overrides: dict | None = None) -> SharedFeatureVideoPredictor:
    tiny = fixtures_dir / "sam2_tiny"
    return build_sam2_predictor(
        tiny / "tiny_sam2.1.yaml", tiny / "weights_propagating.pt", overrides=overrides
    )


@pytest.fixture(scope="module")
def frame_dir(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first NUM_FRAMES frames of videoA in a folder of their own, as SAM 2 reads them."""
    source = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    folder = tmp_path_factory.mktemp("videoA")
    for path in sorted(source.glob("*.jpg"))[:NUM_FRAMES]:
        shutil.copy(path, folder / path.name)
    return folder


def _open(model: SharedFeatureVideoPredictor, fixtures_dir: Path) -> VideoSession:
    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    return model.open_video(sorted(folder.glob("*.jpg"))[:NUM_FRAMES], video_id="videoA")


def _disc(session: VideoSession, cy: int, cx: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: session.height, : session.width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def _non_cond_frames(state: dict, obj_idx: int) -> list[int]:
    return sorted(state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"])


# --------------------------------------------------------------------------------------------------
# The sam2 these classes were written for
# --------------------------------------------------------------------------------------------------


def test_installed_sam2_is_the_release_written_for():
    assert installed_sam2_version() == SAM2_VERSION == "1.1.0"
    assert check_sam2_compatibility() == ""


@pytest.mark.slow
def test_other_sam2_version_warns_on_build_but_builds(fixtures_dir, monkeypatch, caplog):
    monkeypatch.setattr(predictor_module, "installed_sam2_version", lambda: "1.1.1")
    assert "sam2 version: expected 1.1.0, found 1.1.1" in check_sam2_compatibility()
    with caplog.at_level(logging.WARNING, logger="stage2_sam2_refine.predictor"):
        model = _build(fixtures_dir)
    assert isinstance(model, SharedFeatureVideoPredictor)
    assert "SharedFeatureVideoPredictor" in caplog.text and "found 1.1.1" in caplog.text


# --------------------------------------------------------------------------------------------------
# sam2's own init_state and propagate_in_video
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_init_state_takes_an_opened_video_or_a_frame_folder(fixtures_dir: Path, frame_dir: Path):
    model = _build(fixtures_dir)
    session = _open(model, fixtures_dir)
    loader = sam2_video_predictor.load_video_frames
    state = model.init_state(session)
    assert state["images"] is session and state["num_frames"] == NUM_FRAMES
    assert (state["video_height"], state["video_width"]) == session.size
    assert sorted(session.features) == [0]  # sam2's warm-up frame, kept in the session
    assert sam2_video_predictor.load_video_frames is loader  # sam2's own again
    with pytest.raises(TypeError, match="own settings"):
        model.init_state(session, offload_video_to_cpu=True)

    from_folder = model.init_state(str(frame_dir))  # sam2's own loading and feature handling
    assert torch.equal(from_folder["images"], session.images)
    assert sorted(from_folder["cached_features"]) == [0]


@pytest.mark.slow
def test_propagation_draws_no_progress_bar(fixtures_dir, frame_dir, capfd):
    """sam2 draws a tqdm bar per ``propagate_in_video`` pass; ours does not (same masks)."""
    tiny = fixtures_dir / "sam2_tiny"
    stock = build_reference_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_propagating.pt")
    model = _build(fixtures_dir)
    session = _open(model, fixtures_dir)
    bar = sam2_video_predictor.tqdm
    masks = {}
    for name, predictor, video in [("stock", stock, None), ("ours", model, session)]:
        state = predictor.init_state(str(frame_dir) if video is None else video)
        predictor.add_new_mask(state, PROMPT_FRAME, 1, _disc(session, 200, 300, 80))
        capfd.readouterr()
        masks[name] = [m for _, _, m in predictor.propagate_in_video(state)]
        drawn = "propagate in video" in capfd.readouterr().err
        assert drawn == (name == "stock"), name
    assert sam2_video_predictor.tqdm is bar
    assert len(masks["ours"]) == NUM_FRAMES - PROMPT_FRAME
    for ours, theirs in zip(masks["ours"], masks["stock"], strict=True):
        assert torch.equal(ours, theirs)


# --------------------------------------------------------------------------------------------------
# Propagation
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_clearing_memories_around_a_new_prompt(fixtures_dir: Path):
    """With ``clear_non_cond_mem_around_input``, a new prompt drops the prompted object's tracked
    outputs within ``memory_temporal_stride_for_eval * num_maskmem`` frames, and no other's."""
    model = _build(fixtures_dir, {"clear_non_cond_mem_around_input": True})
    session = _open(model, fixtures_dir)
    state = model.init_state(session)
    model.add_new_mask(state, PROMPT_FRAME, 1, _disc(session, 200, 300, 80))
    model.add_new_mask(state, PROMPT_FRAME, 2, _disc(session, 300, 700, 60))
    tracked = list(range(PROMPT_FRAME + 1, NUM_FRAMES))
    assert [t for t, _, _ in model.propagate_in_video(state)] == [PROMPT_FRAME, *tracked]
    assert _non_cond_frames(state, 0) == _non_cond_frames(state, 1) == tracked

    # object 1 gets a second prompt, on a frame no pass has visited
    new_prompt = PROMPT_FRAME - 2
    model.add_new_mask(state, new_prompt, 1, _disc(session, 200, 290, 80))
    radius = model.memory_temporal_stride_for_eval * model.num_maskmem
    assert radius == 7  # tiny SAM 2.1: stride 1, 7 memories
    # the forward pass from the earliest prompted frame, the pending prompt included
    prompted = [PROMPT_FRAME, new_prompt]
    order = [t for t, reverse in propagation_order(NUM_FRAMES, prompted) if not reverse]
    assert list(order) == list(range(new_prompt, NUM_FRAMES))
    model.propagate_in_video_preflight(state)  # sam2's, calling the per-object clearing
    assert _non_cond_frames(state, 0) == [t for t in tracked if t > new_prompt + radius]
    assert _non_cond_frames(state, 1) == tracked

    outputs = list(model.propagate_in_video(state))
    assert [t for t, _, _ in outputs] == list(order)
    assert all(masks.shape == (2, 1, session.height, session.width) for _, _, masks in outputs)
    # frames tracked before the prompts on PROMPT_FRAME were dropped when the pass reached them
    assert _non_cond_frames(state, 0) == _non_cond_frames(state, 1) == tracked


@pytest.mark.slow
@pytest.mark.parametrize("prompted", [[PROMPT_FRAME, PROMPT_FRAME + 3], [0, 5]])
def test_propagation_order_is_the_order_sam2_propagates_in(fixtures_dir: Path, prompted):
    """The interface's :func:`propagation_order` lists the frames SAM 2's ``propagate_in_video``
    yields, forward then reverse (no reverse pass from frame 0)."""
    model = _build(fixtures_dir)
    session = _open(model, fixtures_dir)
    state = model.init_state(session)
    with pytest.raises(RuntimeError, match="No input points or masks"):
        next(model.propagate_in_video(state))
    for obj_id, frame_idx in enumerate(prompted):
        model.add_new_mask(state, frame_idx, obj_id, _disc(session, 200, 300 + 100 * obj_id, 80))
    steps = [
        (t, reverse)
        for reverse in (False, True)
        for t, _, _ in model.propagate_in_video(state, reverse=reverse)
    ]
    assert steps == propagation_order(NUM_FRAMES, prompted)
