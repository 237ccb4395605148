"""Stage 2's results and records and stage 3's fusion kept as runs, with a scripted tracker.

The tracker interface hands over one frame's masks at a time; the refiner encodes each as it
arrives (the reverse pass's earliest prompted frame replacing the forward one), so a long video's
masks never exist as a ``[T, K, H, W]`` array.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from rvos import intermediates as im
from rvos.masks import RunLengthMasks, bounding_box_area
from stage2_sam2_refine.refine import Refiner
from stage2_sam2_refine.runner import stage2_record
from stage2_sam2_refine.tracker import ObjectPrompt, TrackedFrame, propagation_order
from stage3_fusion.runner import fuse_video

# 1,200 frames of 1280x720: one object's masks are 1.1 GB as a bool stack.
LONG_FRAMES, LONG_SIZE = 1200, (720, 1280)
# What the refiner, the record and the fusion may hold at once for that video: a few frames.
LONG_PEAK_BYTES = 48 * 2**20


def scripted_masks(frame_idx: int, reverse: bool, num_objects: int, size) -> np.ndarray:
    """``[K, H, W] bool``: object ``k`` a box that moves with the frame and differs between the
    passes (so that a frame taken from the wrong pass shows)."""
    height, width = size
    masks = np.zeros((num_objects, height, width), dtype=bool)
    for k in range(num_objects):
        top = (3 * frame_idx + 5 * k + (7 if reverse else 0)) % max(height - 4, 1)
        left = (2 * frame_idx + 3 * k) % max(width - 6, 1)
        masks[k, top : top + 4, left : left + 6] = True
    return masks


class ScriptedSession:
    """A :class:`~stage2_sam2_refine.tracker.TrackingSession` yielding :func:`scripted_masks` in
    :func:`propagation_order`, skipping the frames in ``skip``."""

    video_id = "scripted"

    def __init__(self, num_frames: int, size: tuple[int, int], skip: Sequence[int] = ()) -> None:
        self._num_frames, self._size, self._skip = num_frames, size, set(skip)
        self.prompts: list[ObjectPrompt] = []

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def track(self, prompts: Sequence[ObjectPrompt]) -> Iterator[TrackedFrame]:
        self.prompts = list(prompts)
        order = propagation_order(self._num_frames, [p.frame_idx for p in prompts])
        for frame_idx, reverse in order:
            if frame_idx in self._skip:
                continue
            masks = scripted_masks(frame_idx, reverse, len(prompts), self._size)
            yield TrackedFrame(frame_idx, reverse, masks, np.ones(len(prompts), np.float32))


class ScriptedTracker:
    device = "cpu"

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def open_video(self, frames, *, video_id: str, offload: bool = False) -> ScriptedSession:
        return ScriptedSession(len(frames), self.size)


def dense_way(session: ScriptedSession, prompts: Sequence[ObjectPrompt]) -> np.ndarray:
    """``[T, K, H, W] bool``: every yielded frame written into one array, the last write
    counting (what the refiner did before it kept runs)."""
    height, width = session.size
    out = np.zeros((session.num_frames, len(prompts), height, width), dtype=bool)
    for tracked in session.track(prompts):
        out[tracked.frame_idx] = tracked.masks
    return out


def proposals(num_frames: int, peaks: Sequence[int], size, num_queries: int = 3):
    """Stage-1 inputs whose kept queries are the first ``len(peaks)``, each peaking (its prompt
    frame) on ``peaks[k]``; masks as runs, empty but for a box on each prompt frame."""
    scores = np.full((num_frames, num_queries), 0.1, dtype=np.float32)
    for k, frame_idx in enumerate(peaks):
        scores[:, k] = 0.6
        scores[frame_idx, k] = 0.9
    parts = []
    for frame_idx in range(num_frames):
        if frame_idx not in peaks:
            parts.append(RunLengthMasks.empty((1, num_queries, *size)))
            continue
        frame = np.zeros((1, num_queries, *size), dtype=bool)
        for k, peak in enumerate(peaks):
            frame[0, k, 1:3, 2:5] = peak == frame_idx
        parts.append(RunLengthMasks.encode(frame))
    boxes = np.zeros((num_frames, num_queries, 4), dtype=np.float32)
    return scores, boxes, RunLengthMasks.concatenate(parts)


@pytest.fixture
def refiner(default_config) -> Refiner:
    return Refiner(ScriptedTracker((12, 16)), default_config.stage2)


@pytest.mark.parametrize("peaks", [(3, 5), (0, 2), (8,), (4, 4)])
def test_refiner_keeps_the_masks_of_the_dense_way(refiner, peaks):
    """Per frame the masks of the pass that counts (the reverse one on ``f0``), as runs."""
    session = ScriptedSession(9, (12, 16))
    scores, boxes, masks = proposals(9, peaks, (12, 16))
    result = refiner.refine(session, scores=scores, boxes=boxes, masks=masks, exp_id="0")
    assert isinstance(result.masks, RunLengthMasks)
    np.testing.assert_array_equal(result.columns, np.arange(len(peaks)))
    np.testing.assert_array_equal(result.prompt_frames, peaks)
    expected = dense_way(session, session.prompts)
    assert result.masks.shape == expected.shape
    np.testing.assert_array_equal(result.masks.decode(), expected)
    first = min(peaks)
    if first > 0:  # the reverse pass's masks on f0, not the forward pass's
        reverse = scripted_masks(first, True, len(peaks), (12, 16))
        np.testing.assert_array_equal(result.masks.frame(first), reverse)
        assert not np.array_equal(reverse, scripted_masks(first, False, len(peaks), (12, 16)))
    encoded = RunLengthMasks.encode(expected)
    np.testing.assert_array_equal(result.masks.counts, encoded.counts)
    np.testing.assert_array_equal(result.masks.offsets, encoded.offsets)
    np.testing.assert_array_equal(result.union().decode(), expected.any(axis=1))


def test_a_tracker_that_skips_frames_is_an_error(refiner):
    scores, boxes, masks = proposals(6, (2,), (12, 16))
    session = ScriptedSession(6, (12, 16), skip=(0, 4))
    with pytest.raises(RuntimeError, match=r"skipped frames \[0 4\]"):
        refiner.refine(session, scores=scores, boxes=boxes, masks=masks)


def test_records_and_fusion_equal_the_dense_way(refiner, default_config):
    """The stage-2 record's unions and the stage-3 fusion, computed on runs, equal the dense
    computation (decisions, counts and masks)."""
    size, num_frames = (12, 16), 9
    stage1 = im.Stage1Video("scripted", [f"{t:05d}" for t in range(num_frames)], *size)
    rng = np.random.default_rng(0)
    for exp_id, peaks in {"0": (3, 5), "1": (2,), "2": ()}.items():
        scores, boxes, _ = proposals(num_frames, peaks, size)
        dense = rng.random((num_frames, 3, *size)) < 0.05
        for k in range(len(peaks)):  # big stage-1 masks: the SAM 2 boxes are smaller
            dense[:, k, 1 + k : 11, 2:15] = exp_id == "0"
        stage1.expressions[exp_id] = im.ExpressionProposals(
            scores=scores,
            boxes=boxes,
            masks=RunLengthMasks.encode(dense),
            query_ids=np.arange(3, dtype=np.int64),
            answer=RunLengthMasks.encode(dense[:, 0]),
        )
    stage2 = stage2_record(refiner, stage1, [None] * num_frames)
    stage3 = fuse_video(stage2, default_config.stage3)
    decisions = set()
    for exp_id, refinement in stage2.expressions.items():
        kept = refinement.kept_columns
        stage1_union = stage1.expressions[exp_id].masks.decode()[:, kept].any(axis=1)
        sam2_union = refinement.sam2_masks.decode().any(axis=1)
        np.testing.assert_array_equal(refinement.stage1_union.decode(), stage1_union)
        np.testing.assert_array_equal(refinement.sam2_union().decode(), sam2_union)
        areas = [[bounding_box_area(m) for m in u] for u in (stage1_union, sam2_union)]
        valid = (np.array(areas[0]) > 0) & (np.array(areas[1]) > 0)
        smaller = valid & (np.array(areas[1]) * 3 < np.array(areas[0]) * 2)
        multi = smaller.sum() * 2 > valid.sum()
        fused = stage3.expressions[exp_id]
        assert (fused.multi_object, fused.frames_sam2_smaller, fused.frames_both_nonempty) == (
            multi,
            smaller.sum(),
            valid.sum(),
        )
        expected = sam2_union | stage1_union if multi else sam2_union
        np.testing.assert_array_equal(fused.masks.decode(), expected)
        decisions.add(bool(multi))
    assert decisions == {True, False}


def test_a_long_video_is_never_held_at_frame_size(default_config):
    """1,200 frames of 1280x720 through the refiner, the stage-2 record and the fusion: the
    peak of traced memory stays within a few frames, where the dense stack alone is 1.1 GB."""
    num_frames, size = LONG_FRAMES, LONG_SIZE
    refiner = Refiner(ScriptedTracker(size), default_config.stage2)
    scores, boxes, masks = proposals(num_frames, (700,), size, num_queries=2)
    stage1 = im.Stage1Video("long", [f"{t:05d}" for t in range(num_frames)], *size)
    stage1.expressions["0"] = im.ExpressionProposals(
        scores=scores,
        boxes=boxes,
        masks=masks,
        query_ids=np.arange(2, dtype=np.int64),
        answer=masks.select(0, axis=1),
    )
    dense_bytes = num_frames * size[0] * size[1]
    tracemalloc.start()
    try:
        stage2 = stage2_record(refiner, stage1, [None] * num_frames)
        stage3 = fuse_video(stage2, default_config.stage3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refinement = stage2.expressions["0"]
    assert refinement.sam2_masks.shape == (num_frames, 1, *size)
    np.testing.assert_array_equal(
        refinement.sam2_masks.frame(700)[0], scripted_masks(700, True, 1, size)[0]
    )
    assert stage3.expressions["0"].masks.any_foreground().all()
    assert peak < LONG_PEAK_BYTES < dense_bytes / 20, f"peak {peak / 2**20:.1f} MiB"
