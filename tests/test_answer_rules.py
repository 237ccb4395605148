"""Stage-1 answer rules: ReferDINO's Ref-YouTube-VOS top-1 and its Ref-DAVIS17 merge."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmark_layouts import write_ref_davis17

from rvos.legacy import LegacyVideo
from rvos.proposals import (
    annotator_argmax,
    check_answer_rule,
    get_answer_rule,
    stage1_from_legacy,
)
from rvos.splits import DataError, Split
from stage1_referdino.postprocess import proposals_from_outputs


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_top1_keeps_only_the_best_query():
    scores = np.array([[0.9, 0.3, 0.95], [0.9, 0.3, 0.8]], dtype=np.float32)  # means .9 .3 .875
    assert get_answer_rule("top1").select(scores, 0.2).tolist() == [0]
    assert get_answer_rule("threshold_or_top1").select(scores, 0.2).tolist() == [0, 1, 2]
    tied = np.array([[0.5, 0.5]], dtype=np.float32)
    assert get_answer_rule("top1").select(tied, 0.2).tolist() == [0]  # first on ties


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown stage-1 answer rule 'best' \\(known: "):
        get_answer_rule("best")


def test_annotator_argmax_by_hand():
    """Per pixel, ReferDINO's merge: probabilities below 0.5 are zeroed, the background scores
    0.1, the highest wins, the first object on ties. A 2x3 frame, logits at frame size (the
    bilinear resize is then the identity)."""
    first = np.array([[0.9, 0.6, 0.4], [0.5, 0.7, 0.05]])
    second = np.array([[0.8, 0.7, 0.3], [0.2, 0.7, 0.05]])
    logits = [np.vectorize(logit)(p)[None].astype(np.float32) for p in (first, second)]
    masks = annotator_argmax(logits, (2, 3))
    labels = masks[0].decode()[0] * 1 + masks[1].decode()[0] * 2
    # 0.9 vs 0.8: first; 0.6 vs 0.7: second; both below 0.5: background;
    # 0.5 (kept: only values below 0.5 are zeroed) vs 0.2: first; 0.7 vs 0.7: first; background.
    np.testing.assert_array_equal(labels, [[1, 2, 0], [1, 1, 0]])


def test_annotator_argmax_equals_referdino_per_object_resize():
    """Chunked, all objects resized together == ReferDINO's per-object resize of [1, T, h, w]."""
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((5, 6, 7)).astype(np.float32) * 3 for _ in range(3)]
    size = (13, 17)
    masks = annotator_argmax(logits, size, frames_per_chunk=2)
    soft = []
    for obj in logits:
        probs = F.interpolate(torch.from_numpy(obj)[None], size=size, mode="bilinear")
        soft.append(probs.sigmoid()[0])
    soft = torch.stack(soft)  # [n, T, H, W]
    soft[soft < 0.5] = 0.0
    background = 0.1 * torch.ones(1, *soft.shape[1:])
    expected = torch.argmax(torch.cat([background, soft]), dim=0).numpy()
    for obj_idx, obj_masks in enumerate(masks):
        np.testing.assert_array_equal(obj_masks.decode(), expected == obj_idx + 1)
    assert (expected > 0).any() and len(np.unique(expected)) == 4


def test_legacy_import_merges_each_annotator(tmp_path):
    """Two objects whose best queries overlap: within each annotator the pixel goes to the more
    probable object; across annotators nothing is shared."""
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    videos = {
        "v": {
            "frames": ["00000", "00001"],
            "objects": [[f"a{k}" for k in range(4)], [f"b{k}" for k in range(4)]],
            "labels": labels,
        }
    }
    split = Split(write_ref_davis17(tmp_path, videos, size=(4, 4)), "ref_davis17")
    legacy = LegacyVideo("v", "/elsewhere/v", (4, 4))
    for exp_id, expression in split.videos["v"].expressions.items():
        scores = np.array([[0.2, 0.9], [0.2, 0.9]], dtype=np.float32)  # query 1 is the best
        masks = np.full((2, 2, 4, 4), -4.0, dtype=np.float32)
        # Object 0 covers columns 0-2 with probability 0.8, object 1 columns 1-3 with 0.6 for
        # annotator 0 and 0.9 for the others.
        p = 0.8 if expression.obj_idx == 0 else (0.6 if expression.annotator == 0 else 0.9)
        cols = slice(0, 3) if expression.obj_idx == 0 else slice(1, 4)
        masks[:, 1, :, cols] = logit(p)
        legacy.expressions[exp_id] = {
            "scores": scores,
            "boxes": np.zeros((2, 2, 4)),
            "masks": masks,
        }
    record = stage1_from_legacy(
        legacy, split.videos["v"], obj_threshold=0.2, answer="top1_per_annotator"
    )
    for k in range(4):
        first = record.expressions[str(k)].answer.decode()
        second = record.expressions[str(4 + k)].answer.decode()
        assert not (first & second).any()
        shared = slice(1, 3)
        winner = first if k == 0 else second
        assert winner[:, :, shared].all()
        assert first[:, :, 0].all() and second[:, :, 3].all()
    # The plain top-1 rule keeps the overlap.
    plain = stage1_from_legacy(legacy, split.videos["v"], obj_threshold=0.2, answer="top1")
    assert (plain.expressions["0"].answer.decode() & plain.expressions["4"].answer.decode()).any()


def test_merging_rule_needs_a_layout_with_annotators(tmp_path, make_split):
    split = Split(
        make_split(tmp_path, {"v": {"frames": ["0"], "expressions": {"0": "x"}}}), "mevis"
    )
    with pytest.raises(DataError, match="data.answer=top1_per_annotator merges each annotator"):
        check_answer_rule("top1_per_annotator", split)
    check_answer_rule("top1", split)


def test_top1_answer_is_the_best_querys_mask():
    rng = np.random.default_rng(1)
    scores = rng.random((3, 4), dtype=np.float32)
    logits = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    out = proposals_from_outputs(
        scores, np.zeros((3, 4, 4)), logits, (10, 12), top_k=None, obj_threshold=0.0, answer="top1"
    )
    best = int(np.argmax(scores.mean(axis=0)))
    np.testing.assert_array_equal(out.answer.decode(), out.masks.decode()[:, best])
