"""Sharding and the worker pool."""

import os

import pytest

from rvos.workers import run_sharded, shard

JOB = "worker_jobs:build_marker_job"


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
