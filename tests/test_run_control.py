"""One run per work folder, and clean stops, with real processes: runs of the command line on
the tiny fixture models, and the worker pool's processes.

A run is held on a chosen video by making one of its frames a named pipe (opening it blocks until
someone writes), or paused with SIGSTOP once it holds its lock, so that a second run, a signal or a
kill arrives at a known point.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from held_frames import hold_frame, release_frame

from referdino_plus.config import load_config
from referdino_plus.workdir_lock import (
    LOCK_FILE,
    Holder,
    WorkDirBusy,
    WorkDirLock,
    check_run_holds,
    read_holder,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = ("stage1.zip", "stage2.zip", "fused.zip")
VIDEOS = {
    "vid1": {"frames": ["00000", "00001", "00002"], "expressions": {"0": "the dog", "1": "a cat"}},
    "vid2": {"frames": ["00000", "00001"], "expressions": {"0": "the bird flying away"}},
}
HELD_VIDEO, HELD_FRAME = "vid2", "00001"  # the second video: the first one is finished by then


# ----------------------------------------------------------------------------- helpers


def run_options(*overrides: str):
    return load_config(list(overrides)).run


def hold_in_process(folder: Path, *more: str) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock (as a run does) and keeps it until killed;
    returned once it holds it."""
    script = (
        "import sys, time\n"
        "from referdino_plus.config import load_config\n"
        "from referdino_plus.workdir_lock import WorkDirLock\n"
        "lock = WorkDirLock(sys.argv[1], load_config(sys.argv[2:]).run, run_id=None,"
        " command='holder')\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(folder), *more],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition, timeout: float = 120, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- the lock, in-process


def test_a_held_lock_refuses_at_once_naming_holder_and_file(tmp_path):
    holder = hold_in_process(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(WorkDirBusy) as err:
            WorkDirLock(tmp_path, run_options(), run_id=None).acquire()
        assert time.monotonic() - started < 1.0  # run.lock_timeout=0: at once
        message = str(err.value)
        assert "\n" not in message
        assert f"work_dir {tmp_path} is in use by another run (pid {holder.pid} on " in message
        assert f"{socket.gethostname()}, started " in message
        assert message.endswith(f"lock file: {tmp_path / LOCK_FILE}")
        recorded = read_holder(tmp_path / LOCK_FILE)
        assert (recorded.pid, recorded.command, recorded.released) == (holder.pid, "holder", False)
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_run_takes_the_lock_once_the_holder_ends(tmp_path, caplog):
    holder = hold_in_process(tmp_path)
    lock = WorkDirLock(
        tmp_path, run_options("run.lock_timeout=60", "run.lock_poll_s=0.1"), run_id=None
    )
    try:
        subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        with caplog.at_level("WARNING"), lock:
            assert holder.wait(timeout=5) is not None  # it had ended when we got the lock
            assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
        assert "waiting for it up to 60 s (run.lock_timeout)" in caplog.text
        assert read_holder(tmp_path / LOCK_FILE).released
    finally:
        holder.kill()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    holder = hold_in_process(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not read_holder(tmp_path / LOCK_FILE).released  # it never let go
    with WorkDirLock(tmp_path, run_options(), run_id=None) as lock:
        assert read_holder(tmp_path / LOCK_FILE).run_id == lock.run_id


def test_a_lock_that_is_off_writes_nothing(tmp_path):
    with WorkDirLock(tmp_path / "work", run_options("run.lock=false"), run_id=None) as lock:
        lock.record_jobs(["7"])
    assert not (tmp_path / "work").exists()


def claimed_by_slurm(folder: Path, run_id: str = "earlier") -> None:
    """A lock file left by a launcher=slurm run whose submitter has ended (job 4711)."""
    record = Holder(run_id, 1, "login1", "2025-01-01T00:00:00+00:00", "", ["4711"], True)
    (folder / LOCK_FILE).write_bytes(record.to_json())


def test_jobs_of_a_slurm_run_keep_the_folder_after_its_submitter_ended(tmp_path, monkeypatch):
    from referdino_plus import workdir_lock

    claimed_by_slurm(tmp_path)
    monkeypatch.setattr(workdir_lock, "active_slurm_jobs", lambda jobs: ["4711_1"])
    with pytest.raises(WorkDirBusy) as err:
        WorkDirLock(tmp_path, run_options(), run_id=None).acquire()
    assert "in use by a launcher=slurm run (pid 1 on login1, started 2025-01-01" in str(err.value)
    assert "SLURM job(s) 4711_1 are still queued or running" in str(err.value)
    assert "scancel 4711" in str(err.value)

    def cannot_ask(jobs):
        raise OSError(2, "squeue is not installed here")

    monkeypatch.setattr(workdir_lock, "active_slurm_jobs", cannot_ask)
    with pytest.raises(WorkDirBusy, match="cannot be checked here .squeue is not installed here"):
        WorkDirLock(tmp_path, run_options(), run_id=None).acquire()
    # The run's own processes (its finishing job) are not kept out by its jobs.
    with WorkDirLock(tmp_path, run_options(), run_id="earlier") as lock:
        assert read_holder(tmp_path / LOCK_FILE).slurm_jobs == ["4711"]
        lock.forget_jobs()
        assert read_holder(tmp_path / LOCK_FILE).slurm_jobs == []
    # Once the jobs have ended, another run takes the folder.
    claimed_by_slurm(tmp_path)
    monkeypatch.setattr(workdir_lock, "active_slurm_jobs", lambda jobs: [])
    with WorkDirLock(tmp_path, run_options(), run_id=None):
        assert read_holder(tmp_path / LOCK_FILE).slurm_jobs == []


def test_a_task_works_only_while_the_lock_names_its_run(tmp_path):
    check_run_holds(tmp_path, "mine")  # no lock file: nothing says otherwise
    claimed_by_slurm(tmp_path, run_id="mine")
    check_run_holds(tmp_path, "mine")
    claimed_by_slurm(tmp_path, run_id="another")
    with pytest.raises(WorkDirBusy, match="this task of run mine stops without touching it"):
        check_run_holds(tmp_path, "mine")


# ----------------------------------------------------------------------------- worker processes

HOLDING_POOL = """
import sys
from rvos.interrupts import exit_status, stop_on_signals
from rvos.workers import run_sharded

try:
    with stop_on_signals():
        run_sharded(
            "worker_jobs:build_holding_job",
            {"out": sys.argv[1], "hold_s": 600},
            ["a", "b", "c", "d"],
            ["cpu", "cpu"],
            desc="holding",
        )
except KeyboardInterrupt as stop:
    sys.exit(exit_status(stop))
"""


def start_holding_pool(out: Path) -> tuple[subprocess.Popen, list[int]]:
    """Two worker processes, each held inside the atomic write of its first video; returns the
    pool's process and the workers' pids."""
    path = os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")])
    pool = subprocess.Popen(
        [sys.executable, "-c", HOLDING_POOL, str(out)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    pid_files = [out / "a.pid", out / "c.pid"]  # the first video of each shard
    try:
        wait_until(lambda: all(p.is_file() and p.read_text() for p in pid_files), 120, "workers")
    except AssertionError:
        pool.kill()
        raise AssertionError(pool.communicate()[1][-3000:]) from None
    return pool, [int(p.read_text()) for p in pid_files]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_pool_stops_its_workers_and_drops_their_writes(tmp_path, signum, status):
    pool, workers = start_holding_pool(tmp_path)
    try:
        pool.send_signal(signum)
        _, stderr = pool.communicate(timeout=60)
        assert pool.returncode == status, stderr[-3000:]
        assert not any(alive(pid) for pid in workers)
        assert "Traceback" not in stderr
        # Each worker was inside an atomic write: dropped, its temporary file removed.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pid", "c.pid"]
    finally:
        pool.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_workers_of_a_killed_pool_stop_too(tmp_path):
    pool, workers = start_holding_pool(tmp_path)
    try:
        pool.send_signal(signal.SIGKILL)
        pool.wait()
        wait_until(lambda: not any(alive(pid) for pid in workers), 30, "no worker left")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pid", "c.pid"]
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- runs of the CLI


@pytest.fixture(scope="module")
def split(tmp_path_factory, make_split):
    return make_split(tmp_path_factory.mktemp("split"), VIDEOS, size=(72, 96))


@pytest.fixture(scope="module")
def run_args(tiny_model_overrides):
    """``run_args(root, out, *more)``: a CPU run of the tiny models on ``root`` into ``out``."""

    def make(root: Path, out: Path, *more: str) -> list[str]:
        return [
            "--cpu",
            *tiny_model_overrides,
            "stage1.top_k=3",
            f"data.root={root}",
            "data.validate_frames=false",  # the held frame is a pipe
            f"work_dir={out / 'work'}",
            f"submission_dir={out / 'submissions'}",
            *more,
        ]

    return make


@pytest.fixture(scope="module")
def uninterrupted(run_cli, run_args, split, tmp_path_factory) -> Path:
    """The archives of a run that nothing disturbs."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_cli(*run_args(split, out))
    return out / "submissions"


def copy_split(split: Path, folder: Path) -> Path:
    subprocess.run(["cp", "-r", str(split), str(folder)], check=True)
    return folder


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """The command line in the background, its output into ``log``."""
    with open(log, "w") as stream:
        return subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), *args],
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )


def held_on_second_video(work: Path, proc: subprocess.Popen, log: Path) -> None:
    """Wait until the run has finished the first video's stage 1 (it then waits on the held
    frame)."""
    first = work / "stage1" / "vid1.npz"
    try:
        wait_until(lambda: first.is_file() or proc.poll() is not None, 120, "first record")
    finally:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {log.read_text()[-3000:]}")


def assert_same_archives(first: Path, second: Path) -> None:
    for name in ARCHIVES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if "ERROR" in line]


def record_times(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.glob("stage*/*.npz")}


@pytest.mark.slow
def test_runs_with_different_settings_take_turns_on_one_work_dir(
    run_cli, run_args, split, uninterrupted, tmp_path
):
    """A second run with other settings is refused at once, naming the first; a third one,
    told to wait, runs once the first has ended; neither disturbs the first's outputs."""
    work, submissions = tmp_path / "work", tmp_path / "submissions"
    first = start_cli(run_args(split, tmp_path), tmp_path / "first.log")
    waiting = None
    try:
        # Paused once it holds the lock: the others meet it there.
        wait_until(
            lambda: (read_holder(work / LOCK_FILE) or Holder("", 0, "", "", "")).pid == first.pid,
            120,
            "the first run's lock",
        )
        first.send_signal(signal.SIGSTOP)
        other = run_args(split, tmp_path, "stage2.score_threshold=0.3")
        refused = run_cli(*other, check=False)
        assert refused.returncode == 1, refused.stderr[-3000:]
        [line] = errors(refused.stderr)
        assert f"work_dir {work} is in use by another run (pid {first.pid} on " in line
        assert f"lock file: {work / LOCK_FILE}" in line and "run.lock_timeout" in line
        assert "Traceback" not in refused.stderr
        assert not (work / "report.json").exists()  # the refused run wrote no report

        waiting = start_cli([*other, "run.lock_timeout=300"], tmp_path / "waiting.log")
        wait_until(
            lambda: "waiting for it up to 300 s" in (tmp_path / "waiting.log").read_text(),
            120,
            "the third run waiting",
        )
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
        first_report = json.loads((work / "report.json").read_text())
        stage1 = {k: v for k, v in record_times(work).items() if k.startswith("stage1/")}
        assert waiting.wait(timeout=300) == 0, (tmp_path / "waiting.log").read_text()[-3000:]
    finally:
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    assert first_report["status"] == "ok"
    # The third run reused the first's stage 1, set its archives aside and wrote its own.
    assert {k: v for k, v in record_times(work).items() if k.startswith("stage1/")} == stage1
    # (stage1.zip, of the same stage-1 settings, stays: it is the third run's too.)
    [aside] = (submissions / "stale").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["fused.zip", "stage2.zip"]
    for name in ARCHIVES:
        kept = (aside if name != "stage1.zip" else submissions) / name
        assert kept.read_bytes() == (uninterrupted / name).read_bytes(), name
    report = json.loads((work / "report.json").read_text())
    assert report["status"] == "ok" and report["progress"]["3"] == {"done": 2, "total": 2}
    assert "score_threshold: 0.3" in (work / "config.yaml").read_text()


@pytest.mark.slow
def test_a_killed_run_does_not_block_the_next_which_resumes(
    run_cli, run_args, split, uninterrupted, tmp_path
):
    root = copy_split(split, tmp_path / "split")
    frame = hold_frame(root, HELD_VIDEO, HELD_FRAME)
    args = run_args(root, tmp_path)
    work = tmp_path / "work"
    killed = start_cli(args, tmp_path / "killed.log")
    try:
        held_on_second_video(work, killed, tmp_path / "killed.log")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        killed.kill()
    assert read_holder(work / LOCK_FILE).pid == killed.pid  # left behind, not released
    finished = record_times(work)
    release_frame(root, HELD_VIDEO, HELD_FRAME, frame)
    run_cli(*args)  # run.lock_timeout=0: would be refused by a lock still held
    assert_same_archives(uninterrupted, tmp_path / "submissions")
    assert {key: record_times(work)[key] for key in finished} == finished


@pytest.mark.slow
def test_sigterm_reports_interrupted_and_its_resume_command_completes_the_run(
    run_args, split, uninterrupted, tmp_path
):
    root = copy_split(split, tmp_path / "split")
    frame = hold_frame(root, HELD_VIDEO, HELD_FRAME)
    args = run_args(root, tmp_path)
    work = tmp_path / "work"
    log = tmp_path / "stopped.log"
    stopped = start_cli(args, log)
    try:
        held_on_second_video(work, stopped, log)
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        stopped.kill()
    output = log.read_text()
    command = shlex.join([sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), *args])
    resume = f"cd {shlex.quote(str(PROJECT_ROOT))} && {command}"
    [line] = errors(output)
    assert "interrupted (SIGTERM); finished videos are kept" in line and line.endswith(resume)
    assert "Traceback" not in output
    report = json.loads((work / "report.json").read_text())
    assert (report["status"], report["error"]) == ("interrupted", "stopped by SIGTERM")
    assert report["progress"] == {
        "1": {"done": 1, "total": 2},
        "2": {"done": 0, "total": 2},
        "3": {"done": 0, "total": 2},
    }
    assert report["resume"] == resume
    assert not [p for p in tmp_path.rglob("*.tmp")]  # the write in progress was dropped
    assert read_holder(work / LOCK_FILE).released
    finished = record_times(work)

    release_frame(root, HELD_VIDEO, HELD_FRAME, frame)
    resumed = subprocess.run(resume, shell=True, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 1 (ReferDINO): 1 video(s) to process, 1 already finished" in resumed.stderr
    assert_same_archives(uninterrupted, tmp_path / "submissions")
    assert {key: record_times(work)[key] for key in finished} == finished
    report = json.loads((work / "report.json").read_text())
    assert (report["status"], report["resume"]) == ("ok", "")
