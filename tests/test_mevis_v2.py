"""MeViS v2: expressions without a target, read, answered and scored (hand-computed accuracies)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_layouts import write_mevis_v2
from PIL import Image
from text_tables import read_table

from rvos.mevis import MevisSplit
from rvos.mevis_metric import evaluate_mevis_v2
from stage1_referdino.postprocess import proposals_from_outputs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FRAMES = ["00000", "00001", "00002"]
SIZE = (12, 16)


def box(frames: list[int]) -> np.ndarray:
    """``[3, H, W]``: a 4x5 box on the given frames."""
    masks = np.zeros((len(FRAMES), *SIZE), dtype=bool)
    masks[frames, 3:7, 4:9] = True
    return masks


@pytest.fixture()
def split(tmp_path):
    videos = {
        "v": {
            "frames": FRAMES,
            "expressions": {
                "0": ("the dog that jumps", box([0, 1, 2])),
                "1": ("the ball, gone at the end", box([0, 1])),
                "2": ("the giraffe", None),
                "3": ("the second cat", None),
            },
        },
        "w": {"frames": FRAMES, "expressions": {"0": ("the elephant", None)}},
    }
    return write_mevis_v2(tmp_path / "valid_u", videos, size=SIZE)


def test_no_target_expressions_and_extra_fields_are_read(split):
    videos = MevisSplit(split).videos
    assert videos["v"].expressions["0"].anno_ids == ("0",)
    assert videos["v"].expressions["2"].anno_ids == ()
    assert videos["w"].expressions["0"].text == "the elephant"


def write_prediction(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    for key, stack in masks.items():
        out = folder / key
        out.mkdir(parents=True, exist_ok=True)
        for name, mask in zip(FRAMES, stack, strict=True):
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(
                out / f"{name}.png"
            )
    return folder


@pytest.fixture()
def prediction(tmp_path):
    """v/0 right; v/1 answered with empty masks (missed); v/2 rightly empty; v/3 a box on frame 1
    although nothing is referred to; video w missing."""
    empty = box([])
    return write_prediction(
        tmp_path / "pred", {"v/0": box([0, 1, 2]), "v/1": empty, "v/2": empty, "v/3": box([1])}
    )


def test_accuracies_and_target_jf_by_hand(split, prediction):
    result = evaluate_mevis_v2(prediction, MevisSplit(split), jobs=1, progress=False)
    per_expression = result.scores.per_expression
    # v/1: missed on frames 0 and 1 (J = F = 0), both empty on frame 2 (1): 1/3.
    assert per_expression[("v", "1")].j == per_expression[("v", "1")].f == pytest.approx(1 / 3)
    # v/3: both empty on frames 0 and 2, a box where nothing is on frame 1: 2/3.
    assert per_expression[("v", "3")].j == per_expression[("v", "3")].f == pytest.approx(2 / 3)
    summary = result.summary()
    # J = F over the 5 expressions: (1 + 1/3 + 1 + 2/3 + 0) / 5 (w/0 is missing: 0).
    assert summary["J"] == summary["F"] == summary["J&F"] == pytest.approx(3 / 5)
    # No-target: v/2 right; v/3 answered with a mask; w/0 missing -> 1 of 3.
    assert summary["N-acc"] == pytest.approx(1 / 3)
    # Target: v/0 answered, v/1 not -> 1 of 2.
    assert summary["T-acc"] == 0.5
    # J&F over the target expressions: (1 + 1/3) / 2.
    assert summary["J&F-T"] == pytest.approx(2 / 3)
    assert list(summary) == ["J", "F", "J&F", "N-acc", "T-acc", "J&F-T"]


COMMANDS = {
    # The benchmark by name, as the pipeline takes it: its metric from its configuration.
    "application": ["run_pipeline.py", "evaluate", "data=mevis_v2_valid_u"],
    "standalone": ["-m", "stage3_fusion.evaluate", "--metric", "mevis_v2"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_line_and_json(split, prediction, tmp_path, command):
    out_json = tmp_path / "scores.json"
    proc = subprocess.run(
        [
            sys.executable, *COMMANDS[command], str(prediction), "--data-root", str(split),
            "--jobs", "1", "--json", str(out_json),
        ],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_table(proc.stdout) == [
        {
            "J": "60.00",
            "F": "60.00",
            "J&F": "60.00",
            "N-acc": "33.33",
            "T-acc": "50.00",
            "J&F-T": "66.67",
        }
    ]
    scores = json.loads(out_json.read_text())
    assert scores["num_no_target"] == 3
    assert scores["per_expression"]["v"]["3"]["target"] is False
    assert scores["per_expression"]["v"]["3"]["predicted_foreground"] is True
    assert scores["per_expression"]["w"]["0"]["status"] == "missing_video"


def test_v1_metric_reads_v2_splits_unchanged(split, prediction):
    """The MeViS v1 metric scores the same J, F and J&F, without the accuracies."""
    proc = subprocess.run(
        [sys.executable, "-m", "stage3_fusion.evaluate", str(prediction), "--data-root", str(split)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_table(proc.stdout) == [{"J": "60.00", "F": "60.00", "J&F": "60.00"}]


@pytest.mark.parametrize(
    ("answer", "threshold", "expected"),
    [
        ("threshold_or_none", 0.5, [1]),  # means .15 .55 .2: query 1 passes
        ("threshold_or_none", 0.6, []),  # none passes: empty masks (MeViS v2)
        ("threshold_or_top1", 0.6, [1]),  # none passes: the best query (MeViS v1)
    ],
)
def test_stage1_answer_may_be_empty(answer, threshold, expected):
    scores = np.array([[0.1, 0.5, 0.2], [0.2, 0.6, 0.2]], dtype=np.float32)
    boxes = np.zeros((2, 3, 4), dtype=np.float32)
    logits = np.full((2, 3, 3, 4), -1.0, dtype=np.float32)
    logits[:, 0, 0, 0] = logits[:, 1, 1, 1] = logits[:, 2, 2, 2] = 1.0  # a corner per query
    out = proposals_from_outputs(
        scores, boxes, logits, (6, 8), top_k=None, obj_threshold=threshold, answer=answer
    )
    union = out.masks.decode()[:, expected].any(axis=1)
    np.testing.assert_array_equal(out.answer.decode(), union)
    assert out.answer.any_foreground().any() == bool(expected)
