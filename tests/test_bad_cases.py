"""The bad-case report: empty expressions, duplicated objects, spatial words, worst J&F.

The crafted run: stage-1 and stage-2 records written by hand for a tiny split (4 frames of
12x16), with one expression that keeps no object (its final mask is empty), one whose two kept
objects are the same object (prompted twice), one whose two objects are distinct, and one sentence
with a spatial word; stage 3 runs on them through the command line (``--stages 3``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_layouts import rle
from in_process import run_in_process
from mask_archives import write_mask_archive

from referdino_plus import visualize
from referdino_plus.config import load_config
from referdino_plus.pipeline import stage_fingerprints
from rvos import intermediates as im
from rvos.bad_cases import (
    duplicate_objects,
    mask_areas,
    mean_iou,
    spatial_pattern,
    spatial_words,
    worst_scores,
)
from rvos.masks import RunLengthMasks
from rvos.scores import ExpressionScore

SIZE = (12, 16)
T = 4
TEXTS = {
    "v1": {
        "0": "the dog walking to the Left",  # spatial
        "1": "a cat",  # keeps no object: empty on every frame
        "2": "the bird",  # one object prompted twice
        "3": "two horses",  # two distinct objects
    },
    "v2": {"0": "the rightful owner", "1": "a fish"},  # "rightful" is not "right"
}
WORDS = ["left", "right", "without", "in front of"]


def box(top, left, height, width, frames=range(T)) -> np.ndarray:
    """``[T, H, W]``: a rectangle on ``frames``."""
    masks = np.zeros((T, *SIZE), dtype=bool)
    for t in frames:
        masks[t, top : top + height, left : left + width] = True
    return masks


def objects(*stacks: np.ndarray) -> RunLengthMasks:
    """``[T, K, H, W]`` runs of ``K`` object stacks (``K = 0``: none)."""
    if not stacks:
        return RunLengthMasks.empty((T, 0, *SIZE))
    return RunLengthMasks.encode(np.stack(stacks, axis=1))


def tracked() -> dict[str, dict[str, RunLengthMasks]]:
    """Per video and expression, the stage-2 objects."""
    bird = box(2, 2, 6, 6)
    bird_again = box(2, 3, 6, 6)  # shifted a column: IoU 30/42 = 0.71 on each frame
    return {
        "v1": {
            "0": objects(box(1, 1, 4, 4)),
            "1": objects(),
            "2": objects(bird, bird_again),
            "3": objects(box(0, 0, 4, 4), box(6, 8, 5, 5)),
        },
        "v2": {"0": objects(box(3, 3, 3, 3)), "1": objects(box(0, 0, 2, 2, frames=[1, 2]))},
    }


@pytest.fixture
def crafted(tmp_path, make_split):
    """A split, its overrides, and stage-1 and stage-2 records made with their fingerprints."""
    videos = {
        v: {"frames": [f"{t:05d}" for t in range(T)], "expressions": texts}
        for v, texts in TEXTS.items()
    }
    root = make_split(tmp_path / "split", videos, size=SIZE)
    overrides = [
        f"data.root={root}",
        f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'sub'}",
        "archive.jobs=1",
        "evaluation.jobs=1",
        f"bad_cases.spatial_words=[{','.join(WORDS)}]",
    ]
    fingerprints = stage_fingerprints(load_config(overrides))
    work_dir = tmp_path / "work"
    for video_id, expressions in tracked().items():
        frames = videos[video_id]["frames"]
        stage1 = im.Stage1Video(video_id, frames, *SIZE)
        stage2 = im.Stage2Video(video_id, frames, *SIZE)
        for exp_id, masks in expressions.items():
            count = masks.shape[1]
            union = masks.union()
            stage1.expressions[exp_id] = im.ExpressionProposals(
                scores=np.full((T, max(count, 1)), 0.5, dtype=np.float32),
                boxes=np.zeros((T, max(count, 1), 4), dtype=np.float32),
                masks=masks if count else RunLengthMasks.empty((T, 1, *SIZE)),
                query_ids=np.arange(max(count, 1)),
                answer=union,
            )
            stage2.expressions[exp_id] = im.ExpressionRefinement(
                kept_columns=np.arange(count, dtype=np.int64),
                prompt_frames=np.arange(count, dtype=np.int64),
                sam2_masks=masks,
                stage1_union=union,
            )
        im.save_stage1(im.stage_path(work_dir, 1, video_id), stage1, fingerprint=fingerprints[1])
        im.save_stage2(im.stage_path(work_dir, 2, video_id), stage2, fingerprint=fingerprints[2])
    return root, overrides


# ----------------------------------------------------------------------------- the checks


def test_areas_and_iou_are_counted_on_the_runs():
    rng = np.random.default_rng(0)
    dense = rng.random((3, 2, *SIZE)) > 0.5
    runs = RunLengthMasks.encode(dense)
    assert (mask_areas(runs) == dense.sum(axis=(2, 3))).all()
    first, second = runs.select(0, axis=1), runs.select(1, axis=1)
    a, b = dense[:, 0], dense[:, 1]
    want = np.mean((a & b).sum(axis=(1, 2)) / (a | b).sum(axis=(1, 2)))
    assert mean_iou(first, second) == pytest.approx(want)
    empty = RunLengthMasks.empty((3, *SIZE))
    assert mean_iou(empty, empty) is None
    # Frames where neither has a pixel do not count.
    only = box(0, 0, 2, 2, frames=[0])
    assert mean_iou(RunLengthMasks.encode(only), RunLengthMasks.encode(only)) == 1.0


def test_duplicates_are_pairs_above_the_threshold():
    masks = tracked()["v1"]["2"]
    (pair,) = duplicate_objects(masks, 0.7)
    assert pair[:2] == (0, 1) and pair[2] == pytest.approx(30 / 42)
    assert duplicate_objects(masks, 0.72) == []
    assert duplicate_objects(tracked()["v1"]["3"], 0.0) == []  # disjoint: IoU 0
    assert duplicate_objects(tracked()["v1"]["1"], 0.0) == []  # no object


def test_spatial_words_are_whole_words_and_phrases():
    pattern = spatial_pattern(WORDS)
    assert spatial_words("The LEFT one, not the right one, left", pattern) == ("left", "right")
    assert spatial_words("leftover rightful", pattern) == ()
    assert spatial_words("the man in  front of the car", pattern) == ("in front of",)
    assert spatial_words("anything", spatial_pattern([])) == ()


def test_worst_are_the_lowest_jf_first():
    scores = {
        ("a", "0"): ExpressionScore(0.5, 0.5),
        ("a", "1"): ExpressionScore(0.0, 0.2),
        ("b", "0"): ExpressionScore(0.2, 0.2),
        ("b", "1"): ExpressionScore(0.9, 0.9),
    }
    worst = worst_scores(scores, 2)
    assert [(w.video_id, w.exp_id) for w in worst] == [("a", "1"), ("b", "0")]
    assert worst[0].jf == pytest.approx(0.1)
    assert worst_scores(scores, 0) == []


# ----------------------------------------------------------------------------- a run


def test_a_run_flags_what_was_planted_and_nothing_else(crafted, capfd, monkeypatch):
    root, overrides = crafted
    drawn = []
    strip = visualize.mask_strip

    def record(frames, masks, *, title, note, **kwargs):
        drawn.append((title.split(":")[0], note))
        return strip(frames, masks, title=title, note=note, **kwargs)

    monkeypatch.setattr(visualize, "mask_strip", record)
    assert run_in_process("--stages", "3", "--cpu", "--visualize", *overrides) == 0
    report = json.loads((root.parent / "work" / "report.json").read_text())
    found = report["bad_cases"]
    assert found["empty"] == [{"video_id": "v1", "exp_id": "1"}]
    (duplicate,) = found["duplicate_objects"]
    assert (duplicate["video_id"], duplicate["exp_id"], duplicate["objects"]) == ("v1", "2", [0, 1])
    assert duplicate["mean_iou"] == pytest.approx(30 / 42)
    assert found["spatial_words"] == [{"video_id": "v1", "exp_id": "0", "words": ["left"]}]
    assert found["worst"] == []  # no ground truth
    assert found["settings"]["duplicate_iou"] == 0.7
    out = capfd.readouterr().out
    assert "empty on every frame: 1 (v1/1)" in out
    assert "duplicated objects: 1 (v1/2 (0, 1) IoU 0.71)" in out
    # The flagged expressions are drawn first, each saying why.
    order = [title for title, _ in drawn]
    assert order[:3] == ["v1/1", "v1/2", "v1/0"]
    assert sorted(order[3:]) == ["v1/3", "v2/0", "v2/1"]
    notes = dict(drawn)
    assert notes["v1/1"].startswith("bad case: empty on every frame")
    assert notes["v1/0"].startswith("bad case: says left")
    assert "bad case" not in notes["v1/3"]


def test_a_higher_threshold_lets_the_duplicate_go(crafted):
    root, overrides = crafted
    assert (
        run_in_process("--stages", "3", "--cpu", "-q", *overrides, "bad_cases.duplicate_iou=0.8")
        == 0
    )
    report = json.loads((root.parent / "work" / "report.json").read_text())
    assert report["bad_cases"]["duplicate_objects"] == []
    assert (
        run_in_process("--stages", "3", "--cpu", "-q", *overrides, "bad_cases.enabled=false") == 0
    )
    report = json.loads((root.parent / "work" / "report.json").read_text())
    assert report["bad_cases"] is None


# ----------------------------------------------------------------------------- an archive


def test_an_archive_on_its_own_lists_empty_spatial_and_worst(tmp_path, make_split, capfd):
    videos = {
        v: {"frames": [f"{t:05d}" for t in range(T)], "expressions": texts}
        for v, texts in TEXTS.items()
    }
    root = make_split(tmp_path / "split", videos, size=SIZE)
    truth = {v: {e: m.union().decode() for e, m in exps.items()} for v, exps in tracked().items()}
    predicted = {v: dict(exps) for v, exps in truth.items()}
    predicted["v2"]["0"] = np.zeros_like(predicted["v2"]["0"])  # empty, and the worst
    mask_dict = {
        f"{v}-{e}": [rle(frame) if frame.any() else None for frame in stack]
        for v, exps in truth.items()
        for e, stack in exps.items()
    }
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    frames = {v: spec["frames"] for v, spec in videos.items()}
    pred = write_mask_archive(tmp_path / "pred.zip", predicted, frames)
    out = tmp_path / "bad.json"
    args = [f"data.root={root}", "evaluation.jobs=1", "bad_cases.worst=1", f"--json={out}"]
    assert (
        run_in_process("badcases", pred, *args, f"bad_cases.spatial_words=[{','.join(WORDS)}]") == 0
    )
    found = json.loads(out.read_text())
    assert found["empty"] == [{"video_id": "v1", "exp_id": "1"}, {"video_id": "v2", "exp_id": "0"}]
    assert found["spatial_words"] == [{"video_id": "v1", "exp_id": "0", "words": ["left"]}]
    assert [(w["video_id"], w["exp_id"], w["J&F"]) for w in found["worst"]] == [("v2", "0", 0.0)]
    assert found["duplicate_objects"] == []
    assert "lowest J&F: 1 (v2/0 0.0)" in capfd.readouterr().out
