"""Bad input, missing files and damaged state: found before the compute, reported in one line,
nothing lost, and the rerun that succeeds.

The end-to-end cases run the command line on the tiny fixture models; a finished run is made once
(``finished``) and copied where a case needs to damage it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from referdino_plus.archives import archive_stamp, set_aside_stale_archives
from referdino_plus.config import load_config
from referdino_plus.preflight import (
    MARGIN_BYTES,
    MARGIN_FRACTION,
    SAM2_OBJECTS,
    PreflightError,
    VideoShape,
    format_size,
    png_bytes,
    preflight,
    record_bytes,
    space_needed,
    space_problem,
)
from rvos.checkpoints import CheckpointError, load_weights
from rvos.frames import check_frames
from rvos.io import atomic_output, make_temp_dir
from rvos.splits import Split
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


def archive_bytes(folder: Path) -> dict[str, bytes]:
    """Every archive under ``folder`` (``stale/`` included), by its relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.zip")}


def run_fingerprint(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.comment)["run_fingerprint"]


@pytest.mark.slow
def test_refused_runs_leave_the_archives_as_they_were(
    finished, run_cli, tmp_path, tiny_model_overrides, fixtures_dir
):
    run, overrides = copy_run(finished, tmp_path, tiny_model_overrides)
    before = archive_bytes(run / "submissions")
    assert sorted(before) == ["fused.zip", "stage1.zip", "stage2.zip"]
    not_sam2 = fixtures_dir / "referdino_tiny" / "referdino_checkpoint.pth"
    refusals = [
        # stage 2 alone after a stage-1 option changed: it needs fresh stage-1 outputs
        (["--stages", "2", "stage1.obj_threshold=0.3"], "needs the stage 1 (ReferDINO) outputs"),
        (
            ["--stages", "2", "3", "stage1.obj_threshold=0.4"],
            "needs the stage 1 (ReferDINO) outputs",
        ),
        ([f"stage2.checkpoint={not_sam2}", "stage2.score_threshold=0.3"], "not a SAM 2 checkpoint"),
    ]
    for args, reason in refusals:
        proc = run_cli("--cpu", *overrides, *args, check=False)
        assert proc.returncode == 1 and reason in one_error(proc)
        assert "moved to" not in proc.stderr
        assert archive_bytes(run / "submissions") == before  # nothing moved, nothing lost


@pytest.mark.slow
def test_archives_of_other_configurations_are_kept_apart_never_overwritten(
    finished, run_cli, tmp_path, tiny_model_overrides
):
    run, overrides = copy_run(finished, tmp_path, tiny_model_overrides)
    submissions = run / "submissions"
    finished_fp = run_fingerprint(submissions / "fused.zip")
    before = archive_bytes(submissions)
    # Runs of other stage-2 settings that start, then fail: SAM 2.1-T's architecture does not
    # take the tiny model's weights (a SAM 2 checkpoint, so the checks let it through).
    for threshold in ("0.3", "0.35"):
        proc = run_cli(
            "--cpu", *overrides, f"stage2.score_threshold={threshold}",
            "stage2.model=sam2.1_hiera_t", check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert "stage 2 (SAM 2): could not start on cpu" in proc.stderr
    # The first failed run set the finished configuration's stage-2 and fused archives aside,
    # together, by its fingerprint, and said where; the second had nothing to move.
    kept = archive_bytes(submissions)
    assert kept == {
        "stage1.zip": before["stage1.zip"],  # stage 1's configuration did not change
        f"stale/{finished_fp}/stage2.zip": before["stage2.zip"],
        f"stale/{finished_fp}/fused.zip": before["fused.zip"],
    }
    report = json.loads((run / "work" / "report.json").read_text())
    assert report["status"] == "failed" and report["stages"]["2"]["failed"][0]["video_id"] is None


def test_a_set_aside_never_overwrites_another(tmp_path, caplog):
    for content in (b"first", b"second"):
        with zipfile.ZipFile(tmp_path / "fused.zip", "w") as zf:
            zf.writestr("v/0/00000.png", content)
            zf.comment = json.dumps(archive_stamp(3, "f3-old", "run-old")).encode()
        set_aside_stale_archives(tmp_path, {1: "f1", 2: "f2", 3: "f3"})
    stale = tmp_path / "stale" / "run-old"
    assert sorted(p.name for p in stale.iterdir()) == ["fused-2.zip", "fused.zip"]
    with zipfile.ZipFile(stale / "fused.zip") as zf:
        assert zf.read("v/0/00000.png") == b"first"
    assert f"moved to {stale / 'fused-2.zip'}" in caplog.text


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


def test_an_incomplete_bert_folder_says_to_fetch_it_again(tmp_path):
    bert = tmp_path / "ckpt" / "bert-base-uncased"
    bert.mkdir(parents=True)
    (bert / "config.json").write_text('{"model_type": "bert"}')
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


# ----------------------------------------------------------------------------- checkpoint families


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_before_stage_1(
    run_cli, split, tmp_path, tiny_model_overrides, fixtures_dir
):
    referdino = fixtures_dir / "referdino_tiny" / "referdino_checkpoint.pth"
    sam2 = fixtures_dir / "sam2_tiny" / "weights_propagating.pt"
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, f"stage2.checkpoint={referdino}", check=False)
    assert proc.returncode == 1
    assert (
        f"stage2.checkpoint={referdino}: a ReferDINO checkpoint, not a SAM 2 checkpoint; "
        "point stage2.checkpoint= at a SAM 2 checkpoint"
    ) in one_error(proc)
    assert not (tmp_path / "work" / "stage1").exists()  # found before stage 1 ran
    proc = run_cli("--cpu", *overrides, f"stage1.checkpoint={sam2}", check=False)
    assert f"stage1.checkpoint={sam2}: a SAM 2 checkpoint, not a ReferDINO checkpoint" in (
        one_error(proc)
    )


def sam2_checkpoint_problem(checkpoint: str, key: str) -> str | None:
    """The stage-2 checkpoint line of the SAM 2 tracker's model check (None: no problem)."""
    from stage2_sam2_refine.sam2_tracker import model_problems

    cfg = load_config([f"stage2.checkpoint={checkpoint}"])
    problems = [p for p in model_problems(cfg.stage2, hint="hint") if p.startswith(key)]
    return problems[0] if problems else None


def test_checkpoint_families_are_told_apart_from_the_file_index(tmp_path, fixtures_dir):
    import torch

    referdino = fixtures_dir / "referdino_tiny" / "referdino_checkpoint.pth"
    sam2 = fixtures_dir / "sam2_tiny" / "weights_propagating.pt"
    assert sam2_checkpoint_problem(str(sam2), "stage2.checkpoint") is None
    assert "a ReferDINO checkpoint, not a SAM 2" in sam2_checkpoint_problem(
        str(referdino), "stage2.checkpoint"
    )
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    problem = sam2_checkpoint_problem(str(other), "stage2.checkpoint")
    assert problem.startswith(
        f"stage2.checkpoint={other}: a dict with keys ['state_dict'], not a SAM 2 checkpoint"
    )
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    torch.load = spy
    try:
        sam2_checkpoint_problem(str(sam2), "stage2.checkpoint")
    finally:
        torch.load = real_load
    assert loads == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_every_tracker_checks_its_weights_before_a_run(tmp_path, fixtures_dir):
    """Each tracker's model check refuses the other model family's checkpoint in one line."""
    from stage2_sam2_refine.options import Tracker
    from stage2_sam2_refine.tracker import model_problems

    referdino = fixtures_dir / "referdino_tiny" / "referdino_checkpoint.pth"
    for tracker in Tracker:
        cfg = load_config([f"stage2.tracker={tracker.value}", f"stage2.checkpoint={referdino}"])
        problems = model_problems(cfg.stage2, hint="hint")
        assert any(p.startswith(f"stage2.checkpoint={referdino}") for p in problems), tracker


# ----------------------------------------------------------------------------- everything at once


@pytest.mark.slow
def test_plain_run_lists_missing_data_and_checkpoints_in_one_message(run_cli, tmp_path):
    proc = run_cli(
        f"data.root={tmp_path / 'no_data'}", "stage1.checkpoint=nowhere/referdino.pth",
        "stage2.checkpoint=nowhere/sam2.pt", "stage1.text_encoder=nowhere/bert",
        f"work_dir={tmp_path / 'work'}", f"submission_dir={tmp_path / 'submissions'}",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot start, 4 problems:" in one_error(proc)
    for problem in (
        f"{tmp_path / 'no_data' / 'meta_expressions.json'} not found",
        "nowhere/bert",
        "stage1.checkpoint=nowhere/referdino.pth: not found",
        "stage2.checkpoint=nowhere/sam2.pt: not found",
    ):
        assert problem in proc.stderr


# ----------------------------------------------------------------------------- console


@pytest.mark.slow
def test_quiet_run_shows_no_progress_bars_and_the_cpu_fallback_warns(
    run_cli, split, tmp_path, tiny_model_overrides
):
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), "-q", *overrides],
        cwd=PROJECT_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, as on a CPU machine
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "submissions" / "fused.zip").is_file()
    lines = proc.stderr.splitlines()
    assert [line for line in lines if "no GPU found: running on the CPU" in line] == [
        next(line for line in lines if " WARNING " in line)
    ]
    # Only warnings (and the score table on stdout): no bar of a stage, the frame check, the
    # archives or the evaluation.
    assert all(" WARNING " in line for line in lines), proc.stderr
    assert "|" not in proc.stderr and "it/s" not in proc.stderr


# ----------------------------------------------------------------------------- disk space


def estimate_without_margin(needed: int) -> float:
    return (needed - MARGIN_BYTES) / (1 + MARGIN_FRACTION)


@pytest.mark.slow
def test_space_estimate_covers_what_a_run_wrote(finished, tmp_path):
    root, run, overrides = finished
    cfg = load_config([*overrides, f"work_dir={tmp_path / 'empty'}"])  # nothing written yet
    split = Split(root, "mevis")
    sizes = {vid: split.frame_size(vid) for vid in split.video_ids}
    needed = space_needed(cfg, split, [1, 2, 3], {}, sizes)
    records = sum(p.stat().st_size for p in (run / "work").glob("stage*/*.npz"))
    archives = sum(p.stat().st_size for p in (run / "submissions").glob("*.zip"))
    # From nothing: at least what the run wrote, and not far above.
    assert records <= estimate_without_margin(needed["work_dir"]) <= 3 * records
    assert archives <= estimate_without_margin(needed["submission_dir"]) <= 3 * archives


def test_space_estimate_covers_records_and_archives_of_720p_masks(tmp_path):
    from rvos import intermediates as im
    from rvos.archive import write_archive
    from rvos.masks import RunLengthMasks

    rng = np.random.default_rng(0)
    height, width, frames, queries = 720, 1280, 6, 15
    yy, xx = np.mgrid[:height, :width]

    def blobs(count: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(count):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.05, 0.5) * height, rng.uniform(0.05, 0.5) * width
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        return mask

    names = [f"{i:05d}" for i in range(frames)]
    stage1 = im.Stage1Video("v", names, height, width)
    stage2 = im.Stage2Video("v", names, height, width)
    for exp_id in ("0", "1"):  # each query's mask an object of up to two pieces
        masks = np.stack([np.stack([blobs(2) for _ in range(queries)]) for _ in range(frames)])
        stage1.expressions[exp_id] = im.ExpressionProposals(
            scores=rng.random((frames, queries), dtype=np.float32),
            boxes=rng.random((frames, queries, 4), dtype=np.float32),
            masks=RunLengthMasks.encode(masks),
            query_ids=np.arange(queries),
            answer=RunLengthMasks.encode(masks.any(axis=1)),
        )
        stage2.expressions[exp_id] = im.ExpressionRefinement(
            kept_columns=np.arange(SAM2_OBJECTS),
            prompt_frames=np.zeros(SAM2_OBJECTS, dtype=np.int64),
            sam2_masks=RunLengthMasks.encode(masks[:, :SAM2_OBJECTS]),
            stage1_union=RunLengthMasks.encode(masks[:, :SAM2_OBJECTS].any(axis=1)),
        )
    im.save_stage1(tmp_path / "s1.npz", stage1, fingerprint="f")
    im.save_stage2(tmp_path / "s2.npz", stage2, fingerprint="f")
    shape = VideoShape(height, width, frames, 2)
    for stage in (1, 2):
        written = (tmp_path / f"s{stage}.npz").stat().st_size
        assert written <= record_bytes(stage, shape, queries) <= 3 * written
    expected = {"v": {e: names for e in stage1.expressions}}
    answers = {e: p.answer.decode() for e, p in stage1.expressions.items()}
    write_archive(tmp_path / "a.zip", lambda vid: (names, answers), expected, jobs=1)
    written = (tmp_path / "a.zip").stat().st_size
    assert written <= 2 * frames * png_bytes(height, width) <= 3 * written


@pytest.mark.slow
def test_submission_dir_with_half_the_room_is_refused_before_the_compute(
    finished, run_cli, split, tmp_path, tiny_model_overrides, tmpfs
):
    _, run, _ = finished
    archives = sum(p.stat().st_size for p in (run / "submissions").glob("*.zip"))
    small = tmpfs.mount("small", f"{archives // 2 // 4096 * 4096 or 4096}")
    overrides = overrides_for(tiny_model_overrides, split, tmp_path)
    proc = run_cli("--cpu", *overrides, f"submission_dir={small}", check=False)
    assert proc.returncode == 1
    free = shutil.disk_usage(small).free
    assert (
        f"cannot start: submission_dir={small}: {free // 1000} kB free, the run needs about "
    ) in one_error(proc)
    assert "MB; free some space or choose another submission_dir=" in proc.stderr
    assert not (tmp_path / "work" / "stage1").exists()


def test_work_and_submission_dirs_on_one_file_system_share_its_room(
    split, tmp_path, tiny_model_overrides, tmpfs
):
    disk = tmpfs.mount("disk", "1500k")  # room for either folder's estimate, not for both
    cfg = load_config(
        [
            *tiny_model_overrides,
            f"data.root={split}",
            f"work_dir={disk / 'work'}",
            f"submission_dir={disk / 'submissions'}",
        ]
    )
    with pytest.raises(PreflightError) as info:
        preflight(cfg, Split(split, "mevis"), [1, 2, 3])
    (problem,) = info.value.problems
    sizes = {vid: (48, 64) for vid in VIDEOS}
    needed = space_needed(cfg, Split(split, "mevis"), [1, 2, 3], {}, sizes)
    assert max(needed.values()) < 1_500_000 < sum(needed.values())
    assert problem == (
        f"work_dir={disk / 'work'} and submission_dir={disk / 'submissions'} (one file system): "
        f"1.5 MB free, the run needs about {format_size(sum(needed.values()))} (work_dir "
        f"{format_size(needed['work_dir'])}, submission_dir {format_size(needed['submission_dir'])}"
        "); free some space or choose other folders"
    )


# ----------------------------------------------------------------------------- write faults


@pytest.fixture
def run_here(monkeypatch):
    """``run_here(*argv)``: the command line in this process, so that a test can change what the
    run meets between its checks and its stages; its console goes to stderr (``capfd``). The
    logging it sets up is undone after each command."""
    from in_process import run_in_process

    from rvos.progress import QUIET_VARIABLE

    monkeypatch.delenv(QUIET_VARIABLE, raising=False)
    return run_in_process


def once_checked(monkeypatch, damage: Callable[[], None]) -> None:
    """Do ``damage`` once a run has passed its checks, before its stages start."""
    from referdino_plus import pipeline

    set_aside = pipeline.set_aside_stale_archives

    def then_damage(*args):
        moved = set_aside(*args)
        damage()
        return moved

    monkeypatch.setattr(pipeline, "set_aside_stale_archives", then_damage)


def console_errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if " ERROR " in line]


@pytest.mark.slow
def test_a_full_work_dir_stops_the_run_at_the_first_failed_write(
    run_here, capfd, monkeypatch, split, tmp_path, tiny_model_overrides, tmpfs
):
    import stage2_sam2_refine.runner as stage2_runner

    work = tmpfs.mount("work", "4m")
    overrides = [*overrides_for(tiny_model_overrides, split, tmp_path), f"work_dir={work}"]
    assert run_here("--cpu", "--stages", "1", *overrides) == 0
    computed = []
    build = stage2_runner.build_video_processor

    def counting(job, device):
        process = build(job, device)
        return lambda video_id: (computed.append(video_id), process(video_id))[1]

    monkeypatch.setattr(stage2_runner, "build_video_processor", counting)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a report goes otherwise
    once_checked(monkeypatch, lambda: tmpfs.fill(work))
    capfd.readouterr()
    assert run_here("--cpu", "--stages", "2", "3", *overrides) == 1
    err = capfd.readouterr().err
    assert computed == ["vid1"]  # its save failed: no other video was computed
    assert len(console_errors(err)) == 1, err
    (error,) = console_errors(err)
    assert (
        f"stage 2 (SAM 2) stopped: cannot write {work / 'stage2' / 'vid1.npz'}: No space left "
        "on device (ENOSPC); free some space on that file system or write elsewhere, then "
        "rerun the same command (finished work is kept)"
    ) in error
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("logging to ") <= 1  # the log file on the full disk says so once
    # The report is where the warning says, as work_dir has no room for it.
    (report,) = tmp_path.glob("referdino_plus-report-*/report.json")
    assert "report.json could not be written (" in err and f"the report is {report}" in err
    content = json.loads(report.read_text())
    assert content["status"] == "failed" and "No space left on device" in content["error"]


def test_a_log_file_on_a_full_disk_says_so_once(capfd, tmpfs):
    from referdino_plus.runtime import log_file_failed, log_to_file

    logs = tmpfs.mount("logs", "64k")
    path = log_to_file(logs)
    root = logging.getLogger()
    handler = root.handlers[-1]
    try:
        tmpfs.fill(logs)
        for index in range(200):
            logging.getLogger("referdino_plus").warning("line %d %s", index, "x" * 500)
        assert log_file_failed()
    finally:
        root.removeHandler(handler)
        handler.close()
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count(f"logging to {path} stopped: No space left on device") == 1


@pytest.mark.slow
def test_a_submission_dir_made_read_only_mid_run_names_the_archive(
    finished, run_here, capfd, monkeypatch, tmp_path, tiny_model_overrides, tmpfs
):
    run, overrides = copy_run(finished, tmp_path, tiny_model_overrides)
    submissions = tmpfs.mount("submissions", "1m")
    overrides = [*overrides, f"submission_dir={submissions}"]
    once_checked(monkeypatch, lambda: tmpfs.read_only(submissions))
    capfd.readouterr()
    assert run_here("--cpu", *overrides) == 1
    err = capfd.readouterr().err
    (error,) = console_errors(err)
    assert (
        f"cannot write {submissions / 'stage1.zip'}: Read-only file system (EROFS); the file "
        "system is mounted read-only: remount it writable or write elsewhere, then rerun"
    ) in error
    assert ".tmp" not in error and "Traceback" not in err
    assert [line for line in err.splitlines() if " WARNING " in line] == []


def test_permission_denied_names_the_target_not_a_temporary_file(tmp_path):
    # A folder its owner may not write in (mode 0555), written by a process without the
    # capabilities that let root ignore permission bits (as any other user would be).
    if shutil.which("setpriv") is None:
        reason = "setpriv (util-linux) is needed to drop root's capabilities"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path / "not_writable"
    folder.mkdir(mode=0o555)
    folder.chmod(0o555)
    code = (
        "import sys; from pathlib import Path; from rvos.io import atomic_output, WriteError\n"
        "try:\n"
        "    with atomic_output(Path(sys.argv[1]) / 'fused.zip') as tmp:\n"
        "        tmp.write_bytes(b'zip')\n"
        "except WriteError as err:\n"
        "    print(err)\n"
    )
    unprivileged = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    proc = subprocess.run(
        [*unprivileged, sys.executable, "-c", code, str(folder)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == (
        f"cannot write {folder / 'fused.zip'}: Permission denied (EACCES); make the folder "
        "writable for this user or write elsewhere, then rerun the same command (finished "
        "work is kept)"
    ), proc.stderr
    assert list(folder.iterdir()) == []
