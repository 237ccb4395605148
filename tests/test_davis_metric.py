"""The DAVIS 2017 unsupervised protocol (Ref-DAVIS17) on crafted cases worked out by hand.

Frames here have a diagonal under 125 px, so F's boundary tolerance is ``ceil(0.008 * diag) = 1``
pixel: a plus-shaped neighbourhood. A ``k x k`` square's boundary is the one-pixel ring of the
``(k + 1) x (k + 1)`` box half a pixel towards the origin; the ring of the same square shifted by
one column lies next to it everywhere, so F = 1 while J = (k - 1) / (k + 1).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_layouts import encode_labels, write_ref_davis17
from PIL import Image
from text_tables import assert_percent, read_table

from rvos.davis import davis_palette
from rvos.davis_metric import (
    evaluate_davis17,
    ground_truth_objects,
    match_objects,
    predicted_objects,
    statistics,
)
from rvos.scores import ObjectScore
from rvos.splits import DataError, Split

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIZE = (16, 20)  # (H, W): diagonal 25.6 px, tolerance 1 px
EXACT = {"abs": 1e-12}


def labels_of(*objects: np.ndarray) -> np.ndarray:
    """``[T, H, W] uint8`` labels from per-object ``[T, H, W] bool`` masks (object i -> i + 1)."""
    labels = np.zeros(objects[0].shape, dtype=np.uint8)
    for obj_idx, mask in enumerate(objects):
        labels[mask] = obj_idx + 1
    return labels


def square(num_frames: int, top: int, left: int, k: int = 4, size=SIZE) -> np.ndarray:
    masks = np.zeros((num_frames, *size), dtype=bool)
    masks[:, top : top + k, left : left + k] = True
    return masks


def sequence(gt_labels: np.ndarray, pred_labels: np.ndarray) -> dict[int, ObjectScore]:
    """``{gt object id: statistics}`` of one sequence."""
    gt, void = ground_truth_objects(gt_labels)
    j, f, gt_index = match_objects(gt, void, predicted_objects(pred_labels))
    return {
        int(g) + 1: ObjectScore(*statistics(j[row]), *statistics(f[row]))
        for row, g in enumerate(gt_index)
    }


PERFECT = ObjectScore(1.0, 1.0, 0.0, 1.0, 1.0, 0.0)
MISSED = ObjectScore(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # T = 5: bin bounds round(linspace(1, 5, 5)) - 1 = [0, 1, 2, 3, 4]; bins [0:2] and [3:5].
        ([1.0, 1.0, 0.5, 0.0, 0.0], (0.5, 0.4, 1.0)),
        # T = 7: linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7] rounds (half up, +1e-10) to
        # [1, 3, 4, 6, 7]; bins [0:3] and [5:7]: (0.9 + 0.6 + 0.3) / 3 - (0 + 0.3) / 2.
        ([0.9, 0.6, 0.3, 0.6, 0.6, 0.0, 0.3], (3.3 / 7, 4 / 7, 0.6 - 0.15)),
        # T = 2: bounds [0, 0, 1, 1, 1]: first bin [v0], last bin [v1].
        ([1.0, 0.25], (0.625, 0.5, 0.75)),
        # T = 1: every bin is the one frame.
        ([0.75], (0.75, 1.0, 0.0)),
        # Recall counts frames strictly above 0.5.
        ([0.5, 0.5, 0.5, 0.5], (0.5, 0.0, 0.0)),
    ],
)
def test_mean_recall_and_decay(values, expected):
    assert statistics(np.array(values)) == pytest.approx(expected, **EXACT)


# ----------------------------------------------------------------------------- one sequence


def test_perfect():
    gt = labels_of(square(3, 2, 2), square(3, 9, 12))
    assert sequence(gt, gt) == {1: PERFECT, 2: PERFECT}


def test_shifted_by_one_column():
    gt = labels_of(square(3, 2, 2), square(3, 9, 12))
    pred = labels_of(square(3, 2, 3), square(3, 9, 12))
    scores = sequence(gt, pred)
    # 4x4 squares overlapping on 4x3: J = 12 / 20 on every frame; the rings touch: F = 1.
    assert scores[1] == pytest.approx(ObjectScore(0.6, 1.0, 0.0, 1.0, 1.0, 0.0), **EXACT)
    assert scores[2] == PERFECT


def test_shifted_apart():
    gt = labels_of(square(2, 2, 2))
    pred = labels_of(square(2, 10, 14))
    # No overlap and rings more than a pixel apart: J = F = 0.
    assert sequence(gt, pred) == {1: MISSED}


def test_missing_object_is_an_empty_prediction():
    gt = labels_of(square(3, 2, 2), square(3, 9, 12))
    pred = labels_of(square(3, 2, 2))
    assert sequence(gt, pred) == {1: PERFECT, 2: MISSED}


def test_no_prediction_at_all():
    gt = labels_of(square(2, 2, 2), square(2, 9, 12))
    assert sequence(gt, np.zeros_like(gt)) == {1: MISSED, 2: MISSED}


def test_extra_object_and_permuted_labels():
    """The Hungarian matching pairs each ground-truth object with its own prediction, whatever
    the label, and leaves the extra prediction out."""
    gt = labels_of(square(3, 2, 2), square(3, 9, 12))
    pred = labels_of(square(3, 9, 12), square(3, 11, 1), square(3, 2, 2))
    assert sequence(gt, pred) == {1: PERFECT, 2: PERFECT}


def test_empty_frames():
    """The object is absent from the last frame: an empty prediction there scores 1, a
    non-empty one 0 (J: empty intersection; F: one boundary is empty)."""
    present = square(3, 2, 2)
    present[2] = False
    gt = labels_of(present)
    assert sequence(gt, gt) == {1: PERFECT}
    pred = labels_of(square(3, 2, 2))
    # Per frame J = F = [1, 1, 0]; bounds for T = 3: [0, 1, 1, 2, 2], bins [0:2] and [2:3].
    third = ObjectScore(2 / 3, 2 / 3, 1.0, 2 / 3, 2 / 3, 1.0)
    assert sequence(gt, pred) == {1: pytest.approx(third, **EXACT)}


def test_void_pixels_count_for_neither_side():
    gt = labels_of(square(2, 2, 2))
    gt[:, 8:12, :] = 255  # a void band
    pred = labels_of(square(2, 2, 2) | square(2, 8, 10))  # plus a blob inside the void band
    assert sequence(gt, pred) == {1: PERFECT}


def test_objects_are_counted_on_the_first_frame():
    """As the toolkit: the number of ground-truth objects is the largest label of frame 0, so an
    object that appears later is not scored."""
    late = square(2, 9, 12)
    late[0] = False
    gt = labels_of(square(2, 2, 2), late)
    assert sequence(gt, labels_of(square(2, 2, 2))) == {1: PERFECT}


def test_more_than_twenty_objects_is_refused():
    gt = labels_of(square(1, 2, 2))
    pred = np.zeros((1, *SIZE), dtype=np.uint8)
    pred.flat[:21] = np.arange(1, 22)  # one pixel each of objects 1..21
    with pytest.raises(ValueError, match="21 predicted objects"):
        sequence(gt, pred)


# ----------------------------------------------------------------------------- archives


FRAMES = ["00000", "00001", "00002"]
ARCHIVE_SIZE = (48, 64)  # diagonal 80 px: tolerance 1 px


@pytest.fixture()
def davis_split(tmp_path):
    """One video, two objects on every frame, four annotators."""
    gt = labels_of(
        square(3, 4, 6, k=8, size=ARCHIVE_SIZE), square(3, 24, 40, k=10, size=ARCHIVE_SIZE)
    )
    videos = {
        "bike-packing": {
            "frames": FRAMES,
            "objects": [[f"bike {k}" for k in range(4)], [f"rider {k}" for k in range(4)]],
            "labels": gt,
        }
    }
    return write_ref_davis17(tmp_path / "ref-davis", videos, size=ARCHIVE_SIZE), gt


def write_predictions(folder: Path, annotator: int, labels: np.ndarray) -> None:
    out = folder / f"anno_{annotator}" / "bike-packing"
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(FRAMES, labels, strict=True):
        encode_labels(frame).save(out / f"{name}.png")


def test_annotators_are_scored_then_averaged(davis_split, tmp_path):
    root, gt = davis_split
    pred = tmp_path / "pred"
    write_predictions(pred, 0, gt)  # perfect: J = F = 1
    write_predictions(pred, 1, np.where(gt == 2, 0, gt))  # object 2 missed: J = F = 0.5
    shifted = labels_of(
        square(3, 4, 7, k=8, size=ARCHIVE_SIZE), square(3, 24, 40, k=10, size=ARCHIVE_SIZE)
    )
    write_predictions(pred, 2, shifted)  # object 1 shifted: J = (7/9 + 1) / 2, F = 1
    # anno_3 is absent: scored as empty masks, J = F = 0.
    result = evaluate_davis17(pred, Split(root, "ref_davis17"), jobs=1, progress=False)
    rows = {k: a.summary() for k, a in result.annotators.items()}
    assert rows[0]["J&F"] == rows[0]["J"] == rows[0]["F"] == 1.0
    assert rows[1]["J"] == rows[1]["F"] == 0.5
    assert rows[2]["J"] == pytest.approx((56 / 72 + 1) / 2, **EXACT)
    assert rows[2]["F"] == 1.0
    assert rows[3]["J&F"] == 0.0 and result.annotators[3].missing_frames == 3
    summary = result.summary()
    j = (1 + 0.5 + (56 / 72 + 1) / 2 + 0) / 4
    f = (1 + 0.5 + 1 + 0) / 4
    assert summary["J"] == pytest.approx(j, **EXACT)
    assert summary["F"] == pytest.approx(f, **EXACT)
    assert summary["J&F"] == pytest.approx((j + f) / 2, **EXACT)
    assert summary["J-Recall"] == pytest.approx((1 + 0.5 + 1 + 0) / 4, **EXACT)
    assert summary["J-Decay"] == 0.0
    # One unit per annotator and ground-truth object, for the per-video plot.
    assert len(result.per_expression) == 8
    assert result.per_expression[("bike-packing", "anno_1/2")] == MISSED


COMMANDS = {
    # The benchmark by name, as the pipeline takes it: layout and metric from its configuration.
    "application": ["run_pipeline.py", "evaluate", "data=ref_davis17_valid"],
    "standalone": [
        "-m",
        "stage3_fusion.evaluate",
        "--layout",
        "ref_davis17",
        "--metric",
        "davis17",
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_line_prints_each_annotator(davis_split, tmp_path, command):
    root, gt = davis_split
    pred = tmp_path / "pred"
    write_predictions(pred, 0, gt)  # perfect
    write_predictions(pred, 1, np.where(gt == 2, 0, gt))  # object 2 missed
    shifted = labels_of(
        square(3, 4, 7, k=8, size=ARCHIVE_SIZE), square(3, 24, 40, k=10, size=ARCHIVE_SIZE)
    )
    write_predictions(pred, 2, shifted)  # object 1 shifted: J = (7/9 + 1) / 2, not a round number
    write_predictions(pred, 3, gt)
    out_json = tmp_path / "scores.json"
    proc = subprocess.run(
        [
            sys.executable, *COMMANDS[command], str(pred), "--data-root", str(root),
            "--jobs", "1", "--json", str(out_json),
        ],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_table(proc.stdout, row_label=True)
    assert [row[""] for row in rows] == ["anno_0", "anno_1", "anno_2", "anno_3", "avg"]
    assert list(rows[0])[1:] == ["J&F", "J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay"]
    scores = json.loads(out_json.read_text())
    expected = [*(scores["annotators"][f"anno_{k}"] for k in range(4)), scores]
    for row, fractions in zip(rows, expected, strict=True):
        for name, cell in list(row.items())[1:]:
            assert_percent(cell, fractions[name])
    assert rows[2]["J"] == "88.89"  # (7/9 + 1) / 2
    assert rows[1]["J&F"] == "50.00" and rows[0]["J-Decay"] == "0.00"
    assert scores["annotators"]["anno_2"]["per_object"]["bike-packing"]["1"]["F"] == 1.0


def test_bad_predictions_and_missing_ground_truth_are_clear_errors(davis_split, tmp_path):
    root, gt = davis_split
    pred = tmp_path / "pred"
    write_predictions(pred, 0, gt)
    grey = pred / "anno_0" / "bike-packing" / "00001.png"
    Image.fromarray(np.where(gt[1] > 0, 255, 0).astype(np.uint8), mode="L").save(grey)
    with pytest.raises(ValueError, match="anno_0/bike-packing: 255 predicted objects"):
        evaluate_davis17(pred, Split(root, "ref_davis17"), jobs=1, progress=False)
    (root / "valid" / "Annotations" / "bike-packing" / "00002.png").unlink()
    write_predictions(pred, 0, gt)
    with pytest.raises(DataError, match="00002.png not found"):
        evaluate_davis17(pred, Split(root, "ref_davis17"), jobs=1, progress=False)


def test_palette_is_the_pascal_voc_colour_map():
    palette = davis_palette()
    assert len(palette) == 768
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert palette[3 * 255 :] == [224, 224, 192]
