"""Bad input, missing files and damaged state: found before the compute, reported in one line,
nothing lost, and the rerun that succeeds.

The end-to-end cases run the command line on the tiny fixture models; a finished run is made once
(``finished``) and copied where a case needs to damage it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from referdino_plus.preflight import space_problem
from rvos.checkpoints import CheckpointError, load_weights
from rvos.frames import check_frames
from rvos.io import atomic_output, make_temp_dir
from stage1_referdino.build import load_text_encoder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VIDEOS = {
    "vid1": {"frames": ["00000", "00001", "00002"], "expressions": {"0": "the dog", "1": "a cat"}},
    "vid2": {"frames": ["00000", "00001"], "expressions": {"0": "the bird"}},
}
SIZE = (48, 64)


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if " ERROR " in line]


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single error line of a run that stopped cleanly (no traceback on the console)."""
    lines = errors(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def write_ground_truth(root: Path, skip: tuple[str, ...] = ()) -> None:
    mask = np.zeros(SIZE, dtype=bool)
    mask[10:30, 20:40] = True
    gt = {
        f"{vid}-{exp}": [_rle(mask)] * len(spec["frames"])
        for vid, spec in VIDEOS.items()
        for exp in spec["expressions"]
        if f"{vid}-{exp}" not in skip
    }
    (root / "mask_dict.json").write_text(json.dumps(gt))


@pytest.fixture
def split(tmp_path, make_split):
    root = make_split(tmp_path / "split", VIDEOS, size=SIZE)
    write_ground_truth(root)
    return root


def overrides_for(base: list[str], root: Path, run: Path) -> list[str]:
    return [
        *base,
        "stage1.top_k=2",
        f"data.root={root}",
        f"work_dir={run / 'work'}",
        f"submission_dir={run / 'submissions'}",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_split, run_cli, tiny_model_overrides):
    """A complete run under umask 022: ``(split root, run folder, its overrides)``."""
    base = tmp_path_factory.mktemp("finished")
    root = make_split(base / "split", VIDEOS, size=SIZE)
    write_ground_truth(root)
    overrides = overrides_for(tiny_model_overrides, root, base / "run")
    previous = os.umask(0o022)
    try:
        run_cli("--cpu", *overrides)
    finally:
        os.umask(previous)
    return root, base / "run", overrides


def copy_run(finished, tmp_path, tiny_model_overrides) -> tuple[Path, list[str]]:
    """A private copy of the finished run (its split shared): ``(run folder, overrides)``."""
    root, run, _ = finished
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run", overrides_for(tiny_model_overrides, root, tmp_path / "run")


# ----------------------------------------------------------------------------- before the compute


@pytest.mark.slow
def test_missing_sam2_files_are_found_before_stage_1(
    run_cli, split, tmp_path, tiny_model_overrides
):
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli(
        "--cpu", *overrides, "stage2.model=sam2.1_hiera_xl", "stage2.checkpoint=nowhere/sam2.pt",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot start, 2 problems" in proc.stderr and "Traceback" not in proc.stderr
    assert "stage2.model=sam2.1_hiera_xl: unknown SAM 2 model" in proc.stderr
    assert "stage2.checkpoint=nowhere/sam2.pt: not found; run `bash download_ckpts.sh`" in (
        proc.stderr
    )
    assert not list((tmp_path / "work").glob("stage*/*.npz"))  # stage 1 never ran
    assert json.loads((tmp_path / "work" / "report.json").read_text())["status"] == "failed"
    run_cli("--cpu", *overrides)  # fixed: the same command completes
    assert (tmp_path / "submissions" / "fused.zip").is_file()


@pytest.mark.slow
def test_no_checkpoints_or_unknown_model_is_one_message(
    run_cli, split, tmp_path, tiny_model_overrides
):
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, "stage1.checkpoint=nowhere.pth", check=False)
    line = one_error(proc)
    assert proc.returncode == 1
    assert (
        "cannot start: stage1.checkpoint=nowhere.pth: not found; run `bash download_ckpts.sh`"
        in line
    )
    proc = run_cli("--cpu", *overrides, "stage1.model=mevis_swinx", check=False)
    line = one_error(proc)
    assert "stage1.model=mevis_swinx: no ReferDINO config named 'mevis_swinx'" in line
    assert "None" not in proc.stderr and "some videos failed" not in proc.stderr


@pytest.mark.slow
def test_truncated_frame_is_found_before_the_models_load(
    run_cli, split, tmp_path, tiny_model_overrides
):
    frame = split / "JPEGImages" / "vid2" / "00001.jpg"
    good = frame.read_bytes()
    frame.write_bytes(good[: len(good) // 2])  # a valid header, half the pixels
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, check=False)
    line = one_error(proc)
    assert proc.returncode == 1
    assert "video 'vid2'" in line and "00001.jpg unreadable" in line and "truncated" in line
    assert not (tmp_path / "work" / "stage1").exists()
    frame.write_bytes(good)
    run_cli("--cpu", *overrides)
    assert (tmp_path / "submissions" / "fused.zip").is_file()


def test_frame_check_decodes_in_full_and_caches(tmp_path, make_split):
    root = make_split(tmp_path / "split", VIDEOS, size=SIZE)
    videos = {v: sorted((root / "JPEGImages" / v).glob("*.jpg")) for v in VIDEOS}
    cache = tmp_path / "cache.json"
    assert check_frames(videos, cache=cache, progress=False) == []
    assert len(json.loads(cache.read_text())["frames"]) == 5
    bad = videos["vid1"][1]
    bad.write_bytes(bad.read_bytes()[:200])  # changed since the cache: decoded again
    videos["vid2"][0].unlink()
    problems = check_frames(videos, cache=cache, progress=False)
    assert len(problems) == 2
    assert "video 'vid1'" in problems[0] and "00001.jpg unreadable" in problems[0]
    assert "video 'vid2'" in problems[1] and "00000.jpg missing" in problems[1]


@pytest.mark.slow
def test_unwritable_submission_dir_is_found_before_the_compute(
    run_cli, split, tmp_path, tiny_model_overrides
):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, f"submission_dir={blocker / 'submissions'}", check=False)
    line = one_error(proc)
    assert proc.returncode == 1
    assert f"submission_dir={blocker / 'submissions'}: cannot write there" in line
    assert not (tmp_path / "work" / "stage1").exists()
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["status"] == "failed" and "submission_dir" in report["error"]


@pytest.mark.parametrize(
    ("free", "needed", "stated"),
    [
        (10**6, 5 * 10**9, "1.0 MB free, the run needs about 5.0 GB"),
        (0, 3 * 10**5, "0 kB free, the run needs about 300 kB"),
        (2 * 10**9, 35 * 10**8, "2.0 GB free, the run needs about 3.5 GB"),
    ],
)
def test_too_little_space_is_a_problem_in_the_unit_that_fits(
    tmp_path, monkeypatch, free, needed, stated
):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))
    problem = space_problem(tmp_path, "submission_dir", needed)
    assert problem.startswith(f"submission_dir={tmp_path}: {stated}; free some space")
    assert space_problem(tmp_path, "submission_dir", free) is None


# ----------------------------------------------------------------------------- finished runs


@pytest.mark.slow
def test_ground_truth_gap_skips_the_evaluation_not_the_run(
    run_cli, split, tmp_path, tiny_model_overrides
):
    write_ground_truth(split, skip=("vid2-0",))
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    for _ in range(2):  # and a rerun does the same
        proc = run_cli("--cpu", *overrides)
        assert "does not cover 1 expression(s) (vid2/0 (anno_id vid2-0: missing))" in proc.stderr
        assert "archives are written but not evaluated" in proc.stderr
        assert "J&F" not in proc.stdout
        assert (tmp_path / "submissions" / "fused.zip").is_file()
    assert json.loads((tmp_path / "work" / "report.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_damaged_record_is_recomputed_with_a_warning(
    finished, run_cli, tmp_path, tiny_model_overrides
):
    run, overrides = copy_run(finished, tmp_path, tiny_model_overrides)
    record = run / "work" / "stage3" / "vid1.npz"
    data = bytearray(record.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1024] = bytes(1024)  # 1 kB overwritten inside
    record.write_bytes(bytes(data))
    fused = (run / "submissions" / "fused.zip").read_bytes()
    proc = run_cli("--cpu", *overrides)
    assert f"{record} is damaged" in proc.stderr or f"{record} is unreadable" in proc.stderr
    assert "stage 3 (fusion): 1 video(s) to process" in proc.stderr
    with (
        zipfile.ZipFile(run / "submissions" / "fused.zip") as new,
        zipfile.ZipFile(io.BytesIO(fused)) as old,
    ):
        assert {n: new.read(n) for n in new.namelist()} == {n: old.read(n) for n in old.namelist()}


@pytest.mark.slow
def test_failed_run_of_another_configuration_sets_the_old_archives_aside(
    finished, run_cli, tmp_path, tiny_model_overrides, fixtures_dir
):
    run, overrides = copy_run(finished, tmp_path, tiny_model_overrides)
    not_sam2 = fixtures_dir / "referdino_tiny" / "referdino_checkpoint.pth"  # loads, wrong keys
    proc = run_cli(
        "--cpu", *overrides, "stage2.score_threshold=0.3", f"stage2.checkpoint={not_sam2}",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "stage 2 (SAM 2): could not start on cpu" in proc.stderr
    assert "fused.zip was made with another configuration: moved to" in proc.stderr
    submissions = run / "submissions"
    assert not (submissions / "fused.zip").exists() and not (submissions / "stage2.zip").exists()
    assert (submissions / "stale" / "fused.zip").is_file()
    assert (submissions / "stage1.zip").is_file()  # stage 1's configuration did not change
    report = json.loads((run / "work" / "report.json").read_text())
    assert report["status"] == "failed" and report["stages"]["2"]["failed"][0]["video_id"] is None


@pytest.mark.slow
def test_outputs_get_the_usual_modes(finished):
    _, run, _ = finished
    for path in [*run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_atomic_files_and_temporary_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        from rvos import io

        io.current_umask.cache_clear()
        with atomic_output(tmp_path / "out.json") as tmp:
            tmp.write_text("{}")
        folder = make_temp_dir(tmp_path, ".masks.")
    finally:
        os.umask(previous)
        io.current_umask.cache_clear()
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


# ----------------------------------------------------------------------------- weights


def test_download_failures_are_counted_and_leave_nothing_behind(tmp_path):
    if shutil.which("curl") is None and shutil.which("wget") is None:
        pytest.fail("download_ckpts.sh needs curl or wget (installed by .ci/run)")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "config.json").write_text('{"model_type": "bert"}')
    env = {**os.environ, "CKPT_DIR": str(tmp_path / "ckpt"), "BERT_URL": mirror.as_uri()}
    proc = subprocess.run(
        ["bash", str(PROJECT_ROOT / "download_ckpts.sh"), "bert"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "downloaded 1, already there 0, failed 3" in proc.stdout
    assert proc.stderr.count("FAILED") == 3 and "vocab.txt" in proc.stderr
    bert = tmp_path / "ckpt" / "bert-base-uncased"
    assert sorted(p.name for p in bert.iterdir()) == ["config.json"]
    assert not (tmp_path / "ckpt" / ".partial").exists()
    with pytest.raises(
        FileNotFoundError,
        match=r"incomplete \(missing vocab.txt\): rerun `bash download_ckpts.sh bert`",
    ):
        load_text_encoder(bert)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="download_ckpts.sh bert"):
        load_text_encoder(empty)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    "content",
    [b"<html>404 Not Found</html>", b"", pickle.dumps(print)],
    ids=["html", "empty", "pickled-code"],
)
def test_unusable_weight_files_never_suggest_weights_only_false(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_weights(path, what="ReferDINO checkpoint", hint="run `bash download_ckpts.sh`")
    message = str(info.value)
    assert str(path) in message and "download_ckpts.sh" in message
    assert "weights_only" not in message and "\n" not in message


@pytest.mark.slow
def test_garbage_checkpoint_is_one_line(run_cli, split, tmp_path, tiny_model_overrides):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, f"stage1.checkpoint={garbage}", check=False)
    line = one_error(proc)
    assert f"stage1.checkpoint={garbage}: not a PyTorch checkpoint" in line
    assert "weights_only" not in proc.stderr


# ----------------------------------------------------------------------------- set-up


def test_make_test_sets_up_a_fresh_clone_first(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "test", f"VENV={tmp_path / 'venv'}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"-m venv {tmp_path / 'venv'}")
    assert any("pytest" in line for line in lines[1:])


def test_help_lists_the_demo_command(run_cli):
    proc = run_cli("--help")
    assert "demo" in proc.stdout and "run_pipeline.py demo --help" in proc.stdout
