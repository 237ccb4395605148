"""Sharding and the worker pool."""

import os

import pytest

from rvos.progress import QUIET_VARIABLE, set_quiet
from rvos.workers import run_sharded, shard

JOB = "worker_jobs:build_marker_job"
WRITING_JOB = "worker_jobs:build_writing_job"
PROGRESS_JOB = "worker_jobs:build_progress_job"


def test_shard_is_contiguous_sorted_and_deterministic():
    ids = ["v3", "v1", "v5", "v2", "v4"]
    assert shard(ids, 2) == [["v1", "v2", "v3"], ["v4", "v5"]]
    assert shard(list(reversed(ids)), 2) == shard(ids, 2)
    assert shard(ids, 1) == [sorted(ids)]
    assert shard(ids, 7) == [["v1"], ["v2"], ["v3"], ["v4"], ["v5"], [], []]
    parts = shard([f"v{i:03d}" for i in range(140)], 8)
    assert sorted(sum(parts, [])) == [f"v{i:03d}" for i in range(140)]
    assert {len(p) for p in parts} == {17, 18}


def test_shard_rejects_zero_workers():
    with pytest.raises(ValueError):
        shard(["a"], 0)


def test_single_worker_runs_in_process_and_reports_failures(tmp_path):
    config = {"out": str(tmp_path), "fail": ["b"]}
    summary = run_sharded(JOB, config, ["c", "a", "b"], ["cpu"], desc="test")
    assert sorted(summary.done) == ["a", "c"]
    assert [(f.video_id, f.device) for f in summary.failures] == [("b", "cpu")]
    assert "cannot process b" in summary.failures[0].error
    pids = {p.read_text().split()[0] for p in tmp_path.iterdir()}
    assert pids == {str(os.getpid())}


def test_listener_hears_each_video_start_before_its_outcome(tmp_path):
    events = []
    config = {"out": str(tmp_path), "fail": ["b"]}

    def listen(kind, worker, video_id, message):
        # A start is told before the video is processed (its marker is not written yet).
        events.append((kind, video_id, (tmp_path / f"{video_id}.cpu").exists()))

    run_sharded(JOB, config, ["b", "a"], ["cpu"], desc="test", on_event=listen)
    assert events == [
        ("start", "a", False),
        ("done", "a", True),
        ("start", "b", False),
        ("failed", "b", False),
    ]


@pytest.mark.slow
def test_processes_keep_other_shards_and_report_a_dead_worker(tmp_path):
    # Two workers: shard 0 = [a, b], shard 1 = [c, d]; the worker of shard 0 dies on b.
    config = {"out": str(tmp_path), "die": ["b"]}
    events = []
    summary = run_sharded(
        JOB,
        config,
        ["a", "b", "c", "d"],
        ["cpu", "cpu"],
        desc="test",
        on_event=lambda kind, worker, video_id, _: events.append((kind, worker, video_id)),
    )
    # The listener also hears the death, with the video the worker was on.
    assert ("failed", 0, "b") in events and ("start", 0, "b") in events
    assert sorted(summary.done) == ["a", "c", "d"]
    assert len(summary.failures) == 1
    failure = summary.failures[0]
    assert failure.video_id == "b" and failure.worker == 0
    assert "exit code 3" in failure.error
    assert sorted(p.stem for p in tmp_path.iterdir()) == ["a", "c", "d"]
    markers = [p.read_text().split() for p in tmp_path.iterdir()]
    assert str(os.getpid()) not in {pid for pid, _ in markers}
    # Each of the two processes uses its share of the cores.
    assert {int(threads) for _, threads in markers} == {max(1, (os.cpu_count() or 1) // 2)}


def test_setup_failure_is_reported(tmp_path):
    summary = run_sharded("worker_jobs:build_broken_job", {}, ["a"], ["cpu"], desc="test")
    assert summary.done == [] and summary.failures[0].video_id is None
    assert "download_ckpts.sh" in summary.failures[0].error


# ----------------------------------------------------------------------------- write faults


def test_a_failed_write_stops_the_worker_in_process(tmpfs, tmp_path):
    full = tmpfs.mount("full", "64k")
    tmpfs.fill(full)
    (tmp_path / "log").mkdir()
    config = {"log": str(tmp_path / "log"), "folders": {"a": str(full)}}
    summary = run_sharded(WRITING_JOB, config, ["a1", "a2", "a3"], ["cpu"], desc="test")
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["a1"]  # nothing more computed
    fault = summary.write_fault
    assert fault is not None and fault.video_id == "a1" and summary.failures == [fault]
    assert fault.error.startswith(f"cannot write {full / 'a1.out'}: No space left on device")
    assert "free some space" in fault.error and ".tmp" not in fault.error


@pytest.mark.slow
def test_a_failed_write_stops_every_worker_process(tmpfs, tmp_path):
    # Shard 0 (a1..a5) writes to a full file system, shard 1 (b1..b5) to one with room, slowly:
    # once shard 0's first write fails, shard 1 stops before its next video.
    full = tmpfs.mount("full", "64k")
    tmpfs.fill(full)
    for name in ("log", "roomy"):
        (tmp_path / name).mkdir()
    config = {
        "log": str(tmp_path / "log"),
        "folders": {"a": str(full), "b": str(tmp_path / "roomy")},
        "delay": 1.0,
    }
    videos = [f"{letter}{i}" for letter in "ab" for i in range(1, 6)]
    summary = run_sharded(WRITING_JOB, config, videos, ["cpu", "cpu"], desc="test")
    computed = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert [v for v in computed if v.startswith("a")] == ["a1"]
    assert len([v for v in computed if v.startswith("b")]) < 5, computed
    assert summary.write_fault is not None and summary.write_fault.video_id == "a1"
    assert f"cannot write {full / 'a1.out'}: No space left on device" in summary.write_fault.error
    assert [f for f in summary.failures if not f.write_fault] == []


# ----------------------------------------------------------------------------- quiet


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_progress_bars_of_worker_processes(capfd, monkeypatch, quiet):
    monkeypatch.delenv(QUIET_VARIABLE, raising=False)
    set_quiet(quiet)
    run_sharded(PROGRESS_JOB, {}, ["a", "b"], ["cpu", "cpu"], desc="outer")
    err = capfd.readouterr().err
    shown = ("inner progress of a" in err, "outer [cpu]" in err)
    assert shown == ((False, False) if quiet else (True, True)), err


def test_no_more_processes_than_tasks_or_cores(monkeypatch):
    from rvos import options

    monkeypatch.setattr(options.os, "cpu_count", lambda: 8)
    assert options.process_count(-1, 100) == 8  # all cores
    assert options.process_count(10**6, 100) == 8  # a slip never starts a million processes
    assert options.process_count(4, 100) == 4
    assert options.process_count(4, 2) == 2  # no idle workers
    assert options.process_count(-1, 0) == 1
    monkeypatch.setattr(options.os, "cpu_count", lambda: None)  # unknown: one
    assert options.process_count(-1, 100) == 1
