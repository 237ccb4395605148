"""Each benchmark end to end through the command line, on a tiny split in its real layout.

``data=<benchmark>`` selects the layout, the stage-1 answer rule, the archive and the metric; the
tiny fixture models stand in for the benchmark's ReferDINO and SAM 2 (command-line overrides win
over the benchmark's model choice).
"""

import io
import json
import zipfile

import numpy as np
import pytest
from benchmark_layouts import write_mevis_v2, write_ref_davis17, write_ref_youtube_vos
from PIL import Image
from text_tables import assert_percent, read_table

from rvos import intermediates as im
from rvos.davis import davis_palette
from rvos.scores import STATISTICS

pytestmark = pytest.mark.slow

ARCHIVES = ("stage1.zip", "stage2.zip", "fused.zip")
SIZE = (48, 64)  # (H, W)


def run_benchmark(run_cli, tiny_model_overrides, tmp_path, root, data, *extra):
    """``run_pipeline.py --cpu data=<data> data.root=<root>`` on the tiny models."""
    return run_cli(
        "--cpu",
        f"data={data}",
        f"data.root={root}",
        *tiny_model_overrides,
        "stage1.short_side=32",
        f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'submissions'}",
        *extra,
    )


def score_table(stdout: str, report: dict) -> list[dict[str, str]]:
    """The run's printed score table: a row per archive, each score its report's, rounded."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("archive"))
    rows = read_table("\n".join(lines[start : start + 1 + len(ARCHIVES)]), row_label=True)
    assert [row[""] for row in rows] == list(ARCHIVES)
    for row in rows:
        for name, cell in list(row.items())[1:]:
            assert_percent(cell, report["scores"][row[""]][name])
    return rows


def read_png(archive: zipfile.ZipFile, name: str) -> Image.Image:
    image = Image.open(io.BytesIO(archive.read(name)))
    image.load()
    return image


# ----------------------------------------------------------------------------- Ref-YouTube-VOS


def test_ref_youtube_vos_valid(run_cli, tiny_model_overrides, tmp_path):
    valid = {
        "0a1b2c3d4e": {
            "frames": ["00000", "00005", "00010"],
            "expressions": {"0": "a dog", "1": "a cat"},
        },
        "9f8e7d6c5b": {"frames": ["00000", "00005"], "expressions": {"0": "the man on the left"}},
    }
    test = {"5a5a5a5a5a": {"frames": ["00000", "00005"], "expressions": {"0": "a bird"}}}
    root = write_ref_youtube_vos(tmp_path / "ref-youtube-vos", valid, test, size=SIZE)
    proc = run_benchmark(run_cli, tiny_model_overrides, tmp_path, root, "ref_youtube_vos_valid")

    expected = sorted(
        f"Annotations/{video_id}/{exp_id}/{frame}.png"
        for video_id, spec in valid.items()
        for exp_id in spec["expressions"]
        for frame in spec["frames"]
    )
    for name in ARCHIVES:
        with zipfile.ZipFile(tmp_path / "submissions" / name) as archive:
            assert sorted(archive.namelist()) == expected  # the test video is left out
            for member in expected:
                image = read_png(archive, member)
                assert image.mode == "L" and image.size == (SIZE[1], SIZE[0])
                assert set(np.unique(np.asarray(image))) <= {0, 255}
    # No local ground truth: nothing scored.
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["scores"] == {} and "J&F" not in proc.stdout
    # Stage 1 answers with ReferDINO's Ref-YouTube-VOS rule: the best query by mean score alone.
    for video_id in valid:
        record = im.load_stage1(im.stage_path(tmp_path / "work", 1, video_id))
        for proposals in record.expressions.values():
            best = int(np.argmax(proposals.scores.mean(axis=0)))
            np.testing.assert_array_equal(
                proposals.answer.decode(), proposals.masks.decode()[:, best]
            )


# ----------------------------------------------------------------------------- Ref-DAVIS17


def test_ref_davis17_valid(run_cli, tiny_model_overrides, tmp_path):
    frames = ["00000", "00001"]
    labels = np.zeros((len(frames), *SIZE), dtype=np.uint8)
    labels[:, 4:20, 6:26] = 1
    labels[:, 24:44, 36:60] = 2
    labels[:, 0, :] = 255  # void
    videos = {
        "dogs-jump": {
            "frames": frames,
            "objects": [
                ["a dog", "the dog jumping", "brown dog", "the dog on the left"],
                ["a man", "the man holding a stick", "person", "the man on the right"],
            ],
            "labels": labels,
        }
    }
    root = write_ref_davis17(tmp_path / "ref-davis", videos, size=SIZE)
    proc = run_benchmark(run_cli, tiny_model_overrides, tmp_path, root, "ref_davis17_valid")

    expected = sorted(f"anno_{k}/dogs-jump/{frame}.png" for k in range(4) for frame in frames)
    for name in ARCHIVES:
        with zipfile.ZipFile(tmp_path / "submissions" / name) as archive:
            assert sorted(archive.namelist()) == expected
            for member in expected:
                image = read_png(archive, member)
                assert image.mode == "P" and image.size == (SIZE[1], SIZE[0])
                assert image.getpalette()[:12] == davis_palette()[:12]
                assert set(np.unique(np.asarray(image))) <= {0, 1, 2}
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert list(report["scores"]) == list(ARCHIVES)
    for scores in report["scores"].values():
        assert set(scores) == set(STATISTICS)
        assert all(0.0 <= scores[k] <= 1.0 for k in ("J", "F", "J&F", "J-Recall", "F-Recall"))
    columns = list(score_table(proc.stdout, report)[0])[1:]
    assert columns == ["J", "F", "J&F", "J-Recall", "J-Decay", "F-Recall", "F-Decay"]

    # stage1.zip holds each annotator's objects merged from the stage-1 answers, which the
    # answer rule made disjoint: decoding an annotator's PNGs gives back its answers exactly.
    record = im.load_stage1(im.stage_path(tmp_path / "work", 1, "dogs-jump"))
    with zipfile.ZipFile(tmp_path / "submissions" / "stage1.zip") as archive:
        for k in range(4):
            merged = np.stack(
                [np.asarray(read_png(archive, f"anno_{k}/dogs-jump/{f}.png")) for f in frames]
            )
            for obj_idx in range(2):
                answer = record.expressions[str(4 * obj_idx + k)].answer.decode()
                np.testing.assert_array_equal(merged == obj_idx + 1, answer)


# ----------------------------------------------------------------------------- MeViS v2


def test_mevis_v2_valid_u(run_cli, tiny_model_overrides, tmp_path):
    frames = ["00000", "00001"]
    target = np.zeros((len(frames), *SIZE), dtype=bool)
    target[:, 10:30, 10:40] = True
    videos = {
        "v2a": {
            "frames": frames,
            "expressions": {
                "0": ("the dog running away", target),
                "1": ("the zebra flying over the dog", None),
            },
        },
        "v2b": {
            "frames": frames,
            "expressions": {"0": ("the cat", target), "1": ("the third dog", None)},
        },
    }
    root = write_mevis_v2(tmp_path / "valid_u", videos, size=SIZE)
    # No query passes a mean-score threshold of 1: stage 1 answers every expression with empty
    # masks, instead of the v1 rule's top-1 query.
    proc = run_benchmark(
        run_cli, tiny_model_overrides, tmp_path, root, "mevis_v2_valid_u", "stage1.obj_threshold=1"
    )
    expected = sorted(
        f"{video_id}/{exp_id}/{frame}.png"
        for video_id in videos
        for exp_id in "01"
        for frame in frames
    )
    for name in ARCHIVES:
        with zipfile.ZipFile(tmp_path / "submissions" / name) as archive:
            assert sorted(archive.namelist()) == expected
            image = read_png(archive, "v2b/1/00001.png")
            assert image.mode == "L" and image.size == (SIZE[1], SIZE[0])
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    stage1 = report["scores"]["stage1.zip"]
    # Hand-computed: the 2 no-target expressions are right (J = F = 1), the 2 target expressions
    # are missed on every frame (J = F = 0).
    assert stage1 == {"J": 0.5, "F": 0.5, "J&F": 0.5, "N-acc": 1.0, "T-acc": 0.0, "J&F-T": 0.0}
    for name in ("stage2.zip", "fused.zip"):
        assert set(report["scores"][name]) == {"J", "F", "J&F", "N-acc", "T-acc", "J&F-T"}
    assert score_table(proc.stdout, report)[0] == {
        "": "stage1.zip",
        "J": "50.00",
        "F": "50.00",
        "J&F": "50.00",
        "N-acc": "100.00",
        "T-acc": "0.00",
        "J&F-T": "0.00",
    }
