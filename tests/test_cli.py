"""End-to-end command-line runs on the tiny fixture models.

Each full run happens once (module-scoped fixtures); the tests read its outputs.
"""

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from text_tables import assert_percent, read_table

from rvos.drawing import jf_plot_size

pytestmark = pytest.mark.slow


def _rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def read_expression(archive: zipfile.ZipFile, key: str, frames) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(io.BytesIO(archive.read(f"{key}/{f}.png")))) > 0 for f in frames]
    )


@pytest.mark.parametrize("weights", ["weights_propagating", "weights_quiet"])
def test_stages_2_3_reproduce_referdino_plus(fixtures_dir, tmp_path, weights, run_cli):
    """Acceptance: legacy stage-1 files -> SAM 2 -> fusion equals the original refine script
    (identical fusion decisions and counts, mean IoU >= 0.99 per expression: fixtures README)."""
    refine, sam2 = fixtures_dir / "refine_tiny", fixtures_dir / "sam2_tiny"
    run_cli(
        "--stages", "2", "3", "--cpu", "--name", weights,
        f"data.root={refine / 'mevis'}",
        f"stage1.legacy_dir={refine / 'legacy_stage1'}",
        f"stage2.model={sam2 / 'tiny_sam2.1.yaml'}",
        f"stage2.checkpoint={sam2 / f'{weights}.pt'}",
        f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'submissions'}",
    )  # fmt: skip
    expected = np.load(refine / f"expected_fused_{weights}.npz")
    meta = json.loads((refine / f"expected_fused_{weights}.json").read_text())
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    with zipfile.ZipFile(tmp_path / "submissions" / "fused.zip") as archive:
        assert len(archive.namelist()) == sum(len(m["frames"]) for m in meta["masks"].values())
        for key in expected.files:
            frames, shape = meta["masks"][key]["frames"], meta["masks"][key]["shape"]
            want = np.unpackbits(expected[key], axis=-1)[..., : shape[2]].astype(bool)
            got = read_expression(archive, key, frames)
            assert got.shape == tuple(shape)
            inter, union = (want & got).sum((1, 2)), (want | got).sum((1, 2))
            iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean()
            assert iou >= 0.99, f"{key}: mean IoU {iou:.4f}"
            assert report["fusion"][key] == meta["fusion"][key], key
    decisions = {k: v["multi_object"] for k, v in report["fusion"].items()}
    if weights == "weights_quiet":
        assert any(decisions.values()), "the quiet weights must exercise the multi-object branch"
    for name in ("stage1.zip", "stage2.zip"):
        assert (tmp_path / "submissions" / name).is_file()


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory, make_split):
    """Two short videos with ground truth."""
    videos = {
        "vid1": {
            "frames": ["00000", "00001", "00002"],
            "expressions": {"0": "the dog", "1": "a cat"},
        },
        "vid2": {"frames": ["00000", "00001"], "expressions": {"0": "the bird flying away"}},
    }
    root = make_split(tmp_path_factory.mktemp("split"), videos, size=(72, 96))
    mask_dict = {}
    for video_id, spec in videos.items():
        for exp_id in spec["expressions"]:
            mask = np.zeros((72, 96), dtype=bool)
            mask[10:40, 20:60] = True
            mask_dict[f"{video_id}-{exp_id}"] = [_rle(mask)] * len(spec["frames"])
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def overrides(tiny_model_overrides, tiny_split, run_dir):
    return [
        *tiny_model_overrides,
        f"data.root={tiny_split}",
        "stage1.top_k=3",
        f"work_dir={run_dir / 'work'}",
        f"submission_dir={run_dir / 'submissions'}",
    ]


@pytest.fixture(scope="module")
def full_run(run_cli, overrides):
    """All three stages and the pictures, once."""
    return run_cli("--cpu", "--visualize", *overrides, "visualize.tile_height=48")


def test_full_run_writes_archives_scores_and_pictures(full_run, run_dir):
    for name in ("stage1.zip", "stage2.zip", "fused.zip"):
        assert name in full_run.stdout  # the score table
        with zipfile.ZipFile(run_dir / "submissions" / name) as archive:
            assert sorted(archive.namelist()) == sorted(
                [f"vid1/{e}/{f:05d}.png" for e in "01" for f in range(3)]
                + [f"vid2/0/{f:05d}.png" for f in range(2)]
            )
            image = Image.open(io.BytesIO(archive.read("vid2/0/00001.png")))
            assert image.mode == "L" and image.size == (96, 72)
    work = run_dir / "work"
    assert (work / "config.yaml").is_file()
    report = json.loads((work / "report.json").read_text())
    assert set(report["scores"]) == {"stage1.zip", "stage2.zip", "fused.zip"}
    assert set(report["fusion"]) == {"vid1/0", "vid1/1", "vid2/0"}
    pictures = work / "visualize"
    with Image.open(pictures / "vid1" / "0.png") as image:
        assert image.size[1] > 3 * 48
    with Image.open(pictures / "jf_per_video.png") as image:
        assert image.size == jf_plot_size(2)


def test_score_table_has_a_row_per_archive_and_the_evaluator_agrees(
    full_run, run_cli, overrides, run_dir, tmp_path
):
    """The printed table holds each archive's reported scores, rounded; ``evaluate`` on an
    archive of the run scores it as the run did."""
    report = json.loads((run_dir / "work" / "report.json").read_text())
    lines = full_run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("archive"))
    rows = read_table("\n".join(lines[start : start + 1 + len(report["scores"])]), row_label=True)
    assert [row[""] for row in rows] == list(report["scores"])
    for row in rows:
        assert list(row)[1:] == ["J", "F", "J&F"]
        for name in ("J", "F", "J&F"):
            assert_percent(row[name], report["scores"][row[""]][name])
    out_json = tmp_path / "fused.json"
    fused = run_dir / "submissions" / "fused.zip"
    proc = run_cli("evaluate", fused, *overrides, "--jobs", "1", "--json", out_json)
    [row] = read_table(proc.stdout)
    [fused_row] = [{k: v for k, v in r.items() if k} for r in rows if r[""] == "fused.zip"]
    assert row == fused_row
    scores = json.loads(out_json.read_text())
    assert {k: scores[k] for k in ("J", "F", "J&F")} == report["scores"]["fused.zip"]


def test_rerun_resumes_and_a_changed_setting_recomputes_its_stages(
    full_run, run_cli, overrides, run_dir
):
    work = run_dir / "work"
    # A rerun finds every video finished and recomputes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("stage*/*.npz")}
    second = run_cli("--cpu", *overrides)
    assert "0 video(s) to process, 2 already finished" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in work.glob("stage*/*.npz")} == stamps

    # A changed stage-2 setting invalidates stages 2 and 3 only.
    third = run_cli("--cpu", "--stages", "2", "3", *overrides, "stage2.score_threshold=0.3")
    assert "stage 2 (SAM 2): 2 video(s) to process" in third.stderr
    assert stamps[work / "stage1" / "vid1.npz"] == (work / "stage1" / "vid1.npz").stat().st_mtime_ns


def test_samurai_tracker_runs_stages_2_and_3(full_run, run_cli, overrides, run_dir, tmp_path):
    """``stage2.tracker=samurai`` on the full run's stage-1 records (copied)."""
    work, submissions = tmp_path / "work", tmp_path / "submissions"
    shutil.copytree(run_dir / "work" / "stage1", work / "stage1")
    proc = run_cli(
        "--cpu", "--stages", "2", "3", *overrides, "stage2.tracker=samurai",
        f"work_dir={work}", f"submission_dir={submissions}",
    )  # fmt: skip
    assert "stage 2 (SAM 2): 2 video(s) to process" in proc.stderr
    assert "tracker: samurai" in (work / "config.yaml").read_text()
    for name in ("stage2.zip", "fused.zip"):
        with zipfile.ZipFile(submissions / name) as archive:
            assert sorted(archive.namelist()) == sorted(
                [f"vid1/{e}/{f:05d}.png" for e in "01" for f in range(3)]
                + [f"vid2/0/{f:05d}.png" for f in range(2)]
            )


def test_missing_checkpoint_names_the_download_script(run_cli, overrides, tmp_path):
    proc = run_cli(
        "--cpu", "--stages", "1", *overrides, "stage1.checkpoint=nowhere.pth",
        f"work_dir={tmp_path / 'work'}", f"submission_dir={tmp_path / 'submissions'}",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "download_ckpts.sh" in proc.stderr
    assert not (tmp_path / "submissions" / "stage1.zip").exists()


def test_later_stage_without_inputs_says_what_to_run(run_cli, overrides, tmp_path):
    proc = run_cli(
        "--cpu", "--stages", "3", *overrides, f"work_dir={tmp_path / 'work'}", check=False
    )
    assert proc.returncode == 1
    assert "run --stages 2 3" in proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stage2.prompt=scribble", "stage2.prompt: Invalid value 'scribble'"),
        ("stage9.foo=1", "stage9"),
        ("stage1.top_k=0", "stage1.top_k=0"),
        ("+stage2.score_treshold=0.9", "did you mean stage2.score_threshold?"),
        ("stage2.score_threshold=abc", "stage2.score_threshold"),
        ("stage2.tracker=sam9", "stage2.tracker: Invalid value 'sam9'"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(run_cli, tmp_path, override, message):
    proc = run_cli("--cpu", override, f"work_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
