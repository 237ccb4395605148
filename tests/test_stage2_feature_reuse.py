"""Sharing a video's frames and image features across expressions changes no mask.

Reference: SAM 2's own predictor built by SAM 2's own builder, used the per-expression way of
ReferDINO-Plus (``init_state`` from the frame folder, one ``add_new_*`` per kept query,
``propagate_in_video`` forward then reverse), on CPU with float32 memories
(``tests/oracles/sam2_reference.py``). Ours: one :class:`VideoSession` for all expressions.
Masks must be bit-identical for every prompt kind.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from oracles.sam2_reference import build_reference_predictor, reference_refine
from sam2.sam2_video_predictor import SAM2VideoPredictor

from rvos.legacy import read_legacy_npz
from rvos.masks import upsample_mask_logits
from stage2_sam2_refine.build import build_sam2_predictor
from stage2_sam2_refine.options import PromptKind
from stage2_sam2_refine.refine import Refiner
from stage2_sam2_refine.sam2_tracker import Sam2Tracker

pytestmark = pytest.mark.slow  # loads the fixture models

NUM_FRAMES = 16  # the first frames of videoA, to keep the stock runs short
EXPRESSIONS = ("0", "4", "2")  # 2 objects; 3 objects (two prompted on one frame); none kept
WEIGHTS = "weights_propagating.pt"


@pytest.fixture(scope="module")
def frame_dir(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    folder = tmp_path_factory.mktemp("videoA")
    for path in sorted(source.glob("*.jpg"))[:NUM_FRAMES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def proposals(fixtures_dir: Path) -> dict[str, SimpleNamespace]:
    legacy = read_legacy_npz(fixtures_dir / "refine_tiny" / "legacy_stage1" / "videoA.npz")
    out = {}
    for exp_id in EXPRESSIONS:
        arrays = legacy.expressions[exp_id]
        out[exp_id] = SimpleNamespace(
            scores=arrays["scores"][:NUM_FRAMES],
            boxes=arrays["boxes"][:NUM_FRAMES],
            masks=upsample_mask_logits(arrays["masks"][:NUM_FRAMES], legacy.size),
        )
    return out


@pytest.fixture(scope="module")
def stock(fixtures_dir: Path) -> SAM2VideoPredictor:
    """Built by ``sam2.build_sam.build_sam2_video_predictor``, as ReferDINO-Plus builds it."""
    tiny = fixtures_dir / "sam2_tiny"
    return build_reference_predictor(tiny / "tiny_sam2.1.yaml", tiny / WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def ours(fixtures_dir: Path):
    tiny = fixtures_dir / "sam2_tiny"
    return build_sam2_predictor(tiny / "tiny_sam2.1.yaml", tiny / WEIGHTS, device="cpu")


@pytest.fixture
def encoder_calls(ours, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts image-encoder runs of our predictor."""
    calls: list[int] = []
    forward_image = ours.forward_image

    def counting(img_batch):
        calls.append(img_batch.shape[0])
        return forward_image(img_batch)

    monkeypatch.setattr(ours, "forward_image", counting)
    yield calls


@pytest.mark.parametrize("prompt", ["mask", "box", "point"])
def test_shared_features_give_identical_masks(
    prompt, stock, ours, frame_dir, proposals, encoder_calls, default_config
):
    options = dataclasses.replace(default_config.stage2, prompt=PromptKind(prompt))
    refiner = Refiner(Sam2Tracker(ours, options), options)
    session = refiner.open_video(sorted(frame_dir.glob("*.jpg")), video_id="videoA")
    for exp_id, props in proposals.items():
        result = refiner.refine(
            session, scores=props.scores, boxes=props.boxes, masks=props.masks, exp_id=exp_id
        )
        if result.num_objects == 0:
            assert exp_id == "2"
            continue
        expected = reference_refine(
            stock,
            frame_dir,
            scores=props.scores,
            boxes=props.boxes,
            masks=props.masks,
            options=options,
        ).masks
        assert result.masks.shape == expected.shape == (NUM_FRAMES, result.num_objects, 540, 960)
        assert np.array_equal(result.masks, expected), f"expression {exp_id}"
        assert result.masks.any()
    # every frame went through the image encoder exactly once, for all expressions and passes
    assert len(encoder_calls) == NUM_FRAMES and sorted(session.video.features) == list(
        range(NUM_FRAMES)
    )


def test_offloaded_session_gives_identical_masks(ours, frame_dir, proposals, default_config):
    frames = sorted(frame_dir.glob("*.jpg"))
    props = proposals["4"]
    results = []
    for offload in (False, True):
        refiner = Refiner(Sam2Tracker(ours, default_config.stage2), default_config.stage2)
        session = refiner.open_video(frames, video_id="videoA", offload=offload)
        assert session.video.feature_device.type == "cpu"
        results.append(
            refiner.refine(session, scores=props.scores, boxes=props.boxes, masks=props.masks)
        )
    assert np.array_equal(results[0].masks, results[1].masks)
    np.testing.assert_array_equal(results[0].columns, [0, 1, 5])
    np.testing.assert_array_equal(results[0].prompt_frames, [4, 4, 12])


def test_frame_progress_counts_every_propagated_frame(ours, frame_dir, proposals, default_config):
    """``on_frame`` counts up to the total of both passes, which it knows from the first frame."""
    refiner = Refiner(Sam2Tracker(ours, default_config.stage2), default_config.stage2)
    calls: list[tuple[str, int, int]] = []
    results = dict(
        refiner.refine_video(
            sorted(frame_dir.glob("*.jpg")),
            proposals,
            video_id="videoA",
            on_frame=lambda exp_id, done, total: calls.append((exp_id, done, total)),
        )
    )
    assert results["2"].num_objects == 0 and not [c for c in calls if c[0] == "2"]
    for exp_id in ("0", "4"):
        first = int(results[exp_id].prompt_frames.min())
        # forward: first..T-1; reverse: first..0, or nothing when first is 0
        total = NUM_FRAMES - first + (first + 1 if first else 0)
        mine = [(done, of) for e, done, of in calls if e == exp_id]
        assert mine == [(done, total) for done in range(1, total + 1)], exp_id
