"""Stages 2+3 reproduce ReferDINO-Plus's ``refine_from_refdino.py`` on the reference fixture.

Input: the legacy stage-1 ``videoA.npz`` (read without unpickling code) and the MeViS-layout split
of ``refine_tiny/``; SAM 2: the tiny SAM 2.1 with either weight file. Expected: the fused masks and
fusion decisions the original code wrote (``refine_tiny/expected_fused_<weights>.npz/.json``).
Agreement required (fixtures README): identical fusion decisions, mean IoU >= 0.99 per expression.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rvos.legacy import read_legacy_npz
from rvos.masks import upsample_mask_logits
from rvos.metrics import region_similarity
from rvos.mevis import MevisSplit
from stage2_sam2_refine.refine import RefineConfig, build_refiner
from stage3_fusion.fusion import fuse_expression

VIDEO_ID = "videoA"
MIN_MEAN_IOU = 0.99  # fixtures README: a few pixels may flip where a logit is near 0

# Without sam2's CUDA extension SAM 2 skips hole filling with this warning, as the reference did.
NO_EXTENSION_WARNING = "ignore:cannot import name '_C':UserWarning"


@pytest.fixture(scope="module")
def refine_tiny(fixtures_dir: Path) -> Path:
    return fixtures_dir / "refine_tiny"


@pytest.fixture(scope="module")
def split(refine_tiny: Path) -> MevisSplit:
    return MevisSplit(refine_tiny / "mevis")


@pytest.fixture(scope="module")
def proposals(refine_tiny: Path) -> dict[str, SimpleNamespace]:
    """Per expression: scores, boxes and frame-size masks ``upsample(logits) > 0``."""
    legacy = read_legacy_npz(refine_tiny / "legacy_stage1" / f"{VIDEO_ID}.npz")
    assert legacy.size == (540, 960)
    return {
        exp_id: SimpleNamespace(
            scores=arrays["scores"],
            boxes=arrays["boxes"],
            masks=upsample_mask_logits(arrays["masks"], legacy.size),
        )
        for exp_id, arrays in legacy.expressions.items()
    }


@pytest.mark.filterwarnings(NO_EXTENSION_WARNING)
@pytest.mark.parametrize("weights", ["weights_propagating", "weights_quiet"])
def test_refine_and_fuse_reproduce_reference(
    weights: str,
    fixtures_dir: Path,
    refine_tiny: Path,
    split: MevisSplit,
    proposals: dict[str, SimpleNamespace],
):
    reference = json.loads((refine_tiny / f"expected_fused_{weights}.json").read_text())
    expected = np.load(refine_tiny / f"expected_fused_{weights}.npz")
    refiner = build_refiner(
        model=fixtures_dir / "sam2_tiny" / "tiny_sam2.1.yaml",
        checkpoint=fixtures_dir / "sam2_tiny" / f"{weights}.pt",
        device="cpu",
        config=RefineConfig(),  # ReferDINO-Plus: mask prompts, threshold 0.275
    )
    frame_names = list(split.videos[VIDEO_ID].frame_names)
    # frames come from the data root by video id, never from the stored `video_path`
    results = dict(refiner.refine_video(split.frame_paths(VIDEO_ID), proposals, video_id=VIDEO_ID))
    assert list(results) == list(proposals)

    problems = []
    for exp_id, result in results.items():
        key = f"{VIDEO_ID}/{exp_id}"
        meta, decision = reference["masks"][key], reference["fusion"][key]
        assert meta["frames"] == frame_names
        num_frames, height, width = meta["shape"]
        want = np.unpackbits(expected[key], axis=-1, count=width).astype(bool)
        assert want.shape == (num_frames, height, width)

        stage1_union = proposals[exp_id].masks[:, result.query_indices].any(axis=1)
        fused = fuse_expression(stage1_union, result.union())
        got = (fused.multi_object, fused.frames_sam2_smaller, fused.frames_both_nonempty)
        ref = (
            decision["multi_object"],
            decision["frames_sam2_smaller"],
            decision["frames_both_nonempty"],
        )
        if got != ref:
            problems.append(f"{key}: fusion (multi, smaller, both) {got}, reference {ref}")
        mean_iou = float(
            np.mean([region_similarity(p, g) for p, g in zip(fused.masks, want, strict=True)])
        )
        if mean_iou < MIN_MEAN_IOU:
            problems.append(f"{key}: mean IoU {mean_iou:.4f} < {MIN_MEAN_IOU}")
    assert not problems, "\n".join(problems)
