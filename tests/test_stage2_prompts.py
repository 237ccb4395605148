"""Stage-2 prompt logic on synthetic arrays: query selection, prompt frames, boxes, points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from referdino_plus.config import ConfigError, compose_config
from stage2_sam2_refine.prompts import (
    boxes_to_pixel_xyxy,
    mean_confident_scores,
    prompt_frames,
    sample_points_from_mask,
    select_queries,
)
from stage2_sam2_refine.refine import RefineResult

THRESHOLD = 0.275  # ReferDINO-Plus refine threshold


def _reference_keep(scores: np.ndarray, threshold: float) -> np.ndarray:
    """ReferDINO-Plus's selection, written as in refine_from_refdino.py."""
    scores_t = torch.from_numpy(scores)
    valid_frame = (scores_t > threshold).float()
    avg_scores = (scores_t * valid_frame).sum(0) / (valid_frame.sum(0) + 1e-6)
    return (avg_scores > threshold).numpy()


def test_selection_keeps_confident_queries_only():
    scores = np.full((10, 5), 0.1, dtype=np.float32)
    scores[:, 0] = 0.9  # confident everywhere
    scores[:2, 1] = 0.8  # strong on two frames only: the mean ignores the other frames
    scores[:, 2] = 0.27  # never above the threshold
    scores[:, 3] = 0.276  # just above on every frame
    scores[0, 4] = THRESHOLD  # equal is not above
    np.testing.assert_array_equal(select_queries(scores, THRESHOLD), [0, 1, 3])
    means = mean_confident_scores(scores, THRESHOLD)
    assert means[2] == 0.0 and means[4] == 0.0
    assert means[1] == pytest.approx(0.8, abs=1e-5)


def test_selection_matches_reference_formula_on_random_scores():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.uniform(0.0, 0.5, size=(rng.integers(1, 40), 10)).astype(np.float32)
        kept = select_queries(scores, THRESHOLD)
        np.testing.assert_array_equal(kept, np.flatnonzero(_reference_keep(scores, THRESHOLD)))
        assert kept.dtype == np.int64


def test_no_query_kept_gives_empty_selection():
    scores = np.full((4, 3), 0.2, dtype=np.float32)
    assert select_queries(scores, THRESHOLD).shape == (0,)
    empty = RefineResult.empty(4, 6, 8)
    assert empty.masks.shape == (4, 0, 6, 8) and empty.num_objects == 0
    assert empty.union().shape == (4, 6, 8) and not empty.union().any()


def test_prompt_frame_is_argmax_first_on_ties():
    scores = np.zeros((5, 3), dtype=np.float32)
    scores[3, 0] = 0.9
    scores[[1, 4], 1] = 0.7  # tie: the first frame wins
    scores[:, 2] = 0.5  # all equal: frame 0
    np.testing.assert_array_equal(prompt_frames(scores, np.array([0, 1, 2])), [3, 1, 0])
    np.testing.assert_array_equal(prompt_frames(scores, np.array([2, 0])), [0, 3])


def test_boxes_to_pixel_corners():
    boxes = np.array([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.1, 0.2]], dtype=np.float32)
    out = boxes_to_pixel_xyxy(boxes, height=100, width=200)
    np.testing.assert_allclose(out[0], [0, 0, 200, 100])
    np.testing.assert_allclose(out[1], [40, 65, 60, 85], atol=1e-4)
    assert out.dtype == np.float32


def test_boxes_match_reference_rescale_bit_for_bit():
    rng = np.random.default_rng(1)
    boxes = rng.uniform(0, 1, size=(7, 3, 4)).astype(np.float32)
    height, width = 540, 960
    b = torch.from_numpy(boxes)  # rescale_bboxes of refine_from_refdino.py
    cx, cy, bw, bh = b[..., 0] * width, b[..., 1] * height, b[..., 2] * width, b[..., 3] * height
    ref = torch.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], dim=-1)
    np.testing.assert_array_equal(boxes_to_pixel_xyxy(boxes, height, width), ref.numpy())


def test_points_lie_in_mask_as_xy_without_replacement():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:15, 20:30] = True
    points = sample_points_from_mask(mask, 20, np.random.default_rng(0))
    assert points.shape == (20, 2) and points.dtype == np.float32
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert mask[ys, xs].all()  # (x, y) order
    assert len({(x, y) for x, y in zip(xs, ys, strict=True)}) == 20


def test_points_from_small_mask_repeat_and_empty_mask_gives_none():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2, 3] = mask[6, 1] = True
    points = sample_points_from_mask(mask, 5, np.random.default_rng(0))
    assert points.shape == (5, 2)
    assert {tuple(p) for p in points.tolist()} <= {(3.0, 2.0), (1.0, 6.0)}
    assert sample_points_from_mask(np.zeros((8, 8), bool), 5, np.random.default_rng(0)).shape == (
        0,
        2,
    )


def test_points_are_deterministic_per_seed():
    mask = np.random.default_rng(3).uniform(size=(50, 50)) > 0.5
    a = sample_points_from_mask(mask, 20, np.random.default_rng(7))
    b = sample_points_from_mask(mask, 20, np.random.default_rng(7))
    c = sample_points_from_mask(mask, 20, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_config_defaults_and_validation(default_config):
    options = default_config.stage2  # ReferDINO-Plus's refine settings
    assert (options.score_threshold, options.prompt, options.num_points, options.autocast) == (
        0.275,
        "mask",
        20,
        "float16",
    )
    picked = compose_config(["stage2.prompt=box", "stage2.autocast=null"]).stage2
    assert picked.prompt == "box" and picked.autocast is None
    for bad in ("prompt=scribble", "num_points=0", "autocast=int8", "feature_cache_device=disk"):
        with pytest.raises(ConfigError, match=f"stage2.{bad.split('=')[0]}"):
            compose_config([f"stage2.{bad}"])
