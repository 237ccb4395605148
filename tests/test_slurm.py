"""``launcher=slurm``: the config group, submit-time checks, task outcomes, and end-to-end runs on a
real SLURM cluster (``scripts/slurm_local.sh start`` makes one on this machine).

The end-to-end tests skip, with the reason, where no SLURM controller answers; under ``CI=true``
they fail instead. They hold a task on a chosen video by making one of its frames a named pipe
(opening it blocks until someone writes), so that the test can kill or pre-empt the task there.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from held_frames import hold_frame, release_frame
from pycocotools import mask as mask_utils
from submitit import SlurmJob
from submitit.core.utils import cloudpickle_dump

from referdino_plus.config import ConfigError, from_yaml, load_config, to_yaml
from referdino_plus.launchers.slurm import videos_to_process
from referdino_plus.launchers.slurm.journal import (
    TaskPosition,
    last_position,
    progress_path,
    record_event,
)
from referdino_plus.launchers.slurm.outcomes import TaskOutcome, merge_outcomes, report_task
from referdino_plus.launchers.slurm.record import SubmittedRun
from referdino_plus.launchers.slurm.submit import check_cluster_paths, check_slurm_commands
from referdino_plus.launchers.slurm.task import ShardTask, code_environment
from referdino_plus.launchers.slurm.watch import (
    QueueEntry,
    describe_progress,
    parse_queue,
    task_outcome,
)
from referdino_plus.pipeline import PipelineError, RunResult
from referdino_plus.workdir_lock import LOCK_FILE, read_holder
from rvos.workers import Failure, RunSummary

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = ("stage1.zip", "stage2.zip", "fused.zip")
VIDEOS = ("vid0", "vid1", "vid2", "vid3")  # shards of 2 tasks: [vid0, vid1], [vid2, vid3]
HELD_VIDEO, HELD_FRAME = "vid3", "00001"  # the second shard's second video


# ----------------------------------------------------------------------------- the config group


def test_launcher_slurm_composes_from_the_command_line():
    local = load_config()
    assert local.launcher.name == "local" and not hasattr(local.launcher, "slurm")
    cfg = load_config(
        [
            "launcher=slurm",
            "launcher.tasks=16",
            "launcher.partition=gpu",
            "+launcher.sbatch_args.constraint=a100",
            "work_dir=/shared/work",
        ]
    )
    slurm = cfg.launcher.slurm
    assert (cfg.launcher.name, slurm.tasks, slurm.partition) == ("slurm", 16, "gpu")
    assert slurm.sbatch_args == {"constraint": "a100"}
    assert slurm.log_dir == "/shared/work/slurm"


def test_the_slurm_section_is_spelled_either_way_and_saved_whole():
    new = load_config(["launcher=slurm", "launcher.slurm.tasks=16", "launcher.slurm.qos=high"])
    old = load_config(["launcher=slurm", "launcher.tasks=16", "launcher.qos=high"])
    assert new.launcher == old.launcher and new.launcher.slurm.tasks == 16
    with pytest.raises(ConfigError, match=r"^launcher\.slurm\.tasks=0: expected"):
        load_config(["launcher=slurm", "launcher.slurm.tasks=0"])
    # A run record keeps the configuration as YAML: read back, it has the launcher's section.
    assert from_yaml(to_yaml(new)) == new
    local = load_config()
    assert from_yaml(to_yaml(local)) == local


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["launcher.tasks=16"], "launcher.tasks=16: a setting of launcher=slurm"),
        (["launcher=slurm", "launcher.gpus_per_task=2"], "launcher.gpus_per_task=2"),
        (["launcher=slurm", "launcher.tasks=0"], "launcher.tasks=0"),
        (["launcher=slurm", "launcher.wait=null"], "launcher.wait: needs a value"),
        (["launcher=cluster"], "available: local, slurm"),
    ],
)
def test_bad_launcher_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- submit-time checks


@pytest.fixture
def cluster_config(tmp_path, tiny_model_overrides, make_split):
    root = make_split(tmp_path / "split", {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})

    def make(*overrides):
        return load_config(
            [
                "launcher=slurm",
                *tiny_model_overrides,
                f"data.root={root}",
                f"work_dir={tmp_path / 'work'}",
                f"submission_dir={tmp_path / 'submissions'}",
                *overrides,
            ]
        )

    return make


@pytest.mark.parametrize(
    "key", ["work_dir", "submission_dir", "data.root", "launcher.log_dir", "stage2.checkpoint"]
)
def test_every_path_a_task_uses_must_be_absolute(cluster_config, key):
    cfg = cluster_config(f"{key}=relative/path")
    with pytest.raises(ValueError, match=f"^{key}=relative/path: launcher=slurm needs an abs"):
        check_cluster_paths(cfg, [1, 2, 3])


def test_only_the_files_of_the_stages_to_run_must_be_absolute(cluster_config):
    cfg = cluster_config("stage1.checkpoint=checkpoints/mevis_swinb.pth")
    with pytest.raises(ValueError, match="stage1.checkpoint"):
        check_cluster_paths(cfg, [1, 2, 3])
    check_cluster_paths(cfg, [2, 3])  # stage 1 does not run: its checkpoint is not read


def test_a_sam3_hub_id_is_not_a_path_but_a_relative_sam3_folder_is(
    cluster_config, tmp_path, monkeypatch
):
    cfg = cluster_config("stage2.tracker=sam3", "stage2.checkpoint=facebook/sam3")
    check_cluster_paths(cfg, [2, 3])  # read from the shared Hugging Face cache on each node
    (tmp_path / "sam3").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = cluster_config("stage2.tracker=sam3", "stage2.checkpoint=sam3")
    with pytest.raises(ValueError, match="^stage2.checkpoint=sam3: launcher=slurm needs an abs"):
        check_cluster_paths(cfg, [2, 3])


def test_submitting_needs_the_slurm_commands(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda command: None)
    with pytest.raises(PipelineError, match="`sbatch` not found"):
        check_slurm_commands()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("work_dir=work/relative", "work_dir=work/relative: launcher=slurm needs an absolute path"),
        ("stage2.checkpoint=/nowhere/sam2.pt", "stage2.checkpoint=/nowhere/sam2.pt"),
    ],
)
def test_submit_time_errors_are_one_line(
    run_cli, tiny_model_overrides, make_split, tmp_path, override, message
):
    """Nothing is submitted: the command stops before sbatch, with one line saying what to fix."""
    root = make_split(tmp_path / "split", {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    proc = run_cli(
        "launcher=slurm",
        *tiny_model_overrides,
        f"data.root={root}",
        f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'submissions'}",
        override,
        check=False,
    )
    # 2: a bad argument (checked before anything is touched); 1: the preflight's finding.
    assert proc.returncode == (2 if override.startswith("work_dir") else 1)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work" / "slurm").exists()
    assert not (PROJECT_ROOT / "work" / "relative").exists()


def test_videos_to_process_is_every_video_some_requested_stage_lacks(
    cluster_config, tmp_path, make_stage1
):
    from referdino_plus.pipeline import stage_fingerprints
    from rvos import intermediates as im

    cfg = cluster_config()
    fingerprints = stage_fingerprints(cfg)
    for video_id in ("a", "b"):
        path = im.stage_path(tmp_path / "work", 1, video_id)
        im.save_stage1(path, make_stage1(), fingerprint=fingerprints[1])
    ids = ["c", "b", "a"]
    assert videos_to_process(cfg, fingerprints, [1], ids, False) == ["c"]
    assert videos_to_process(cfg, fingerprints, [1, 2], ids, False) == ["a", "b", "c"]
    assert videos_to_process(cfg, fingerprints, [1], ids, True) == ["a", "b", "c"]


def test_a_task_refuses_to_run_other_code_than_the_submitted(cluster_config):
    elsewhere = {**code_environment(), "code": "/elsewhere/referdino_plus"}
    task = ShardTask(cluster_config(), [1], 0, ["v"], False, elsewhere, "run")
    with pytest.raises(PipelineError, match="submit from a folder the nodes share"):
        task()


# ----------------------------------------------------------------------------- task outcomes


def test_queue_lines_are_read_per_task():
    text = "7_0 COMPLETED None\n7_1 CANCELLED None\n8 PENDING Dependency\n"
    assert parse_queue(text) == {
        "7_0": QueueEntry("COMPLETED", "None"),
        "7_1": QueueEntry("CANCELLED", "None"),
        "8": QueueEntry("PENDING", "Dependency"),
    }


def test_progress_counts_tasks_and_says_why_they_wait(submitted):
    jobs = submitted.jobs() + [SlurmJob(folder=submitted.log_dir, job_id="7_2")]
    states = parse_queue("7_0 COMPLETED None\n7_1 RUNNING None\n7_2 PENDING PartitionConfig\n")
    outcomes = {0: TaskOutcome(0, "7_0", Path("/x"), {1: RunSummary(done=["vid0"])})}
    assert describe_progress(jobs, outcomes, states) == (
        "done 1, failed 0, running 1, pending 1 (PartitionConfig)"
    )


def test_the_last_event_says_where_a_task_was(tmp_path):
    path = tmp_path / "7_1_progress.jsonl"
    assert last_position(path) is None
    record_event(path, 1, "stage")
    assert last_position(path) == TaskPosition(1, None, loading=True)
    record_event(path, 1, "start", "vid2")
    record_event(path, 1, "done", "vid2")
    assert "between two videos" in last_position(path).describe()
    record_event(path, 1, "start", "vid3")
    with open(path, "a") as stream:
        stream.write('{"stage": 1, "ev')  # cut short by the kill
    assert last_position(path) == TaskPosition(1, "vid3", loading=False)
    assert last_position(path).describe() == "while on video 'vid3' of stage 1 (ReferDINO)"


@pytest.fixture
def submitted(tmp_path):
    return SubmittedRun(
        job_ids=["7_0", "7_1"],
        shards=[["vid0", "vid1"], ["vid2", "vid3"]],
        stages=[1, 2, 3],
        log_dir=str(tmp_path),
        config="",
        evaluate=True,
    )


def queue(*lines: str) -> dict:
    return parse_queue("\n".join(f"{line} None" for line in lines))


def outcome_of(submitted, index, states, result_wait_s=0.0, ended_at=None):
    job = submitted.jobs()[index]
    overrides = ["launcher=slurm", f"launcher.result_wait_s={result_wait_s}"]
    options = load_config(overrides).launcher.slurm
    return task_outcome(
        submitted, index, job, states, {} if ended_at is None else ended_at, options
    )


def errors_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_task_ended_by_slurm_is_reported_with_shard_log_and_video(submitted, caplog):
    record_event(progress_path(submitted.log_dir, "7_1"), 1, "start", "vid3")
    assert outcome_of(submitted, 1, queue("7_1 RUNNING")) is None
    assert outcome_of(submitted, 1, None) is None  # squeue did not answer: no conclusion
    # Ended without a result file: reported once result_wait_s has passed.
    ended_at = {}
    assert outcome_of(submitted, 1, queue("7_1 CANCELLED"), 60.0, ended_at) is None
    outcome = outcome_of(submitted, 1, queue("7_1 CANCELLED"))
    assert outcome.error == "was ended by SLURM (CANCELLED)"
    with caplog.at_level(logging.ERROR):
        report_task(outcome)
    log_file = Path(submitted.log_dir) / "7_1_0_log.err"
    assert errors_logged(caplog) == [
        f"shard 1 (job 7_1) was ended by SLURM (CANCELLED) while on video 'vid3' of stage 1 "
        f"(ReferDINO); log: {log_file}"
    ]
    result = merge_outcomes([outcome], [1, 2, 3])
    assert not result.ok
    [failure] = result.stage_summaries[1].failures
    assert (failure.worker, failure.device, failure.video_id) == (1, "slurm job 7_1", "vid3")
    assert str(log_file) in failure.error
    # A task that left the queue (purged) without a result is reported too.
    assert outcome_of(submitted, 0, {}).error == "left the queue without a result"


def test_results_of_tasks_are_read_from_submitit_files(submitted, caplog):
    done = {1: RunSummary(done=["vid0", "vid1"]), 2: RunSummary(done=["vid0", "vid1"])}
    jobs = submitted.jobs()
    cloudpickle_dump(("success", done), jobs[0].paths.result_pickle)
    oom = Failure(0, "cuda:0", "vid3", "OutOfMemoryError: CUDA out of memory", "Traceback ...")
    failed = {1: RunSummary(done=["vid2"], failures=[oom])}
    cloudpickle_dump(("success", failed), jobs[1].paths.result_pickle)
    first = outcome_of(submitted, 0, queue("7_0 COMPLETED"))
    second = outcome_of(submitted, 1, queue("7_1 RUNNING"))  # the file wins over a late queue
    assert first.summaries == done and first.error is None
    with caplog.at_level(logging.ERROR):
        report_task(second)
    assert errors_logged(caplog)[0].startswith(
        "shard 1 (job 7_1): stage 1 (ReferDINO) failed on video 'vid3': OutOfMemoryError: CUDA "
        "out of memory; log: "
    )
    result = merge_outcomes([first, second], [1, 2])
    assert sorted(result.stage_summaries[1].done) == ["vid0", "vid1", "vid2"]
    assert [f.video_id for f in result.stage_summaries[1].failures] == ["vid3"]
    # A task that raised: its exception's last line.
    trace = "Traceback (most recent call last):\n  ...\nPipelineError: stage 2 needs stage 1\n"
    cloudpickle_dump(("error", trace), jobs[1].paths.result_pickle)
    assert outcome_of(submitted, 1, {}).error == "raised PipelineError: stage 2 needs stage 1"


def test_a_run_record_round_trips(submitted):
    path = submitted.save()
    assert path.name == "7_run.json"
    assert SubmittedRun.load(path) == submitted
    assert submitted.finish_command().endswith(f"-m referdino_plus finish {path}")
    path.write_text("{}")
    with pytest.raises(PipelineError, match="not a run record"):
        SubmittedRun.load(path)


def test_outcomes_with_nothing_failed_make_an_ok_result():
    outcome = TaskOutcome(0, "7_0", Path("/x"), {1: RunSummary(done=["a"])})
    result = merge_outcomes([outcome], [1])
    assert isinstance(result, RunResult) and result.ok


# ----------------------------------------------------------------------------- real SLURM


def slurm_problem() -> str | None:
    """Why the SLURM tests cannot run here (``None``: a controller answers with a usable node)."""
    start = "sudo bash scripts/slurm_local.sh start"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"SLURM is not installed (apt-get install slurm-wlm munge; then {start})"
    proc = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"no SLURM controller answers ({last[0]}): {start}"
    states = proc.stdout.split()
    if not any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in states):
        return f"no usable SLURM node (states: {states}): {start}"
    return None


@pytest.fixture(scope="module")
def slurm():
    """A running SLURM cluster; skips without one, except under CI=true where that fails."""
    problem = slurm_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


@pytest.fixture(scope="module")
def split(tmp_path_factory, make_split):
    """Four short videos with ground truth (evaluation runs after the tasks)."""
    videos = {
        video_id: {"frames": ["00000", "00001", "00002"], "expressions": {"0": "a dog", "1": "cat"}}
        for video_id in VIDEOS
    }
    root = make_split(tmp_path_factory.mktemp("split"), videos, size=(72, 96))
    mask = np.zeros((72, 96), dtype=bool)
    mask[10:40, 20:60] = True
    truth = {f"{v}-{e}": [rle(mask)] * 3 for v in VIDEOS for e in ("0", "1")}
    (root / "mask_dict.json").write_text(json.dumps(truth))
    return root


@pytest.fixture(scope="module")
def model_overrides(tiny_model_overrides):
    return [*tiny_model_overrides, "stage1.top_k=3"]


@pytest.fixture(scope="module")
def local_run(split, model_overrides, tmp_path_factory):
    """The same split on this machine's CPU: the archives every SLURM run must reproduce.

    With one CPU thread, as the tasks have (``launcher.cpus_per_task=1``): float32 CPU kernels
    may round differently with another thread count, which can flip a stage-1 mask pixel.
    """
    out = tmp_path_factory.mktemp("local")
    command = [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), "--cpu", *model_overrides]
    command += [f"data.root={split}", f"work_dir={out / 'work'}"]
    command += [f"submission_dir={out / 'submissions'}"]
    proc = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out / "submissions", proc


def slurm_overrides(model_overrides, root: Path, out: Path, *more: str) -> list[str]:
    """A 2-task array of CPU tasks (GPUs per task 0) of 1 core each, polling every second; the
    jobs are named after ``out`` (see :func:`cancel_jobs`)."""
    return [
        "launcher=slurm",
        f"launcher.job_name={job_name(out)}",
        "launcher.tasks=2",
        "launcher.gpus_per_task=0",
        "launcher.cpus_per_task=1",
        "launcher.mem_gb=2",
        "launcher.timeout_min=30",
        "launcher.poll_s=1",
        "launcher.result_wait_s=1",
        *model_overrides,
        f"data.root={root}",
        f"work_dir={out / 'work'}",
        f"submission_dir={out / 'submissions'}",
        *more,
    ]


def job_name(out: Path) -> str:
    return f"test-{out.name}"


def cancel_jobs(out: Path) -> None:
    """Cancel what a test left in the queue (e.g. a task held on a video when the test failed)."""
    subprocess.run(["scancel", f"--name={job_name(out)}"], check=False)


def assert_same_archives(first: Path, second: Path) -> None:
    for name in ARCHIVES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_held(log_dir: Path, timeout: float = 300) -> str:
    """The job id of the task that started HELD_VIDEO, once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in log_dir.glob("*_progress.jsonl"):
            position = last_position(path)
            if position is not None and position.video_id == HELD_VIDEO:
                return path.name.removesuffix("_progress.jsonl")
        time.sleep(0.5)
    raise AssertionError(f"no task reached {HELD_VIDEO} in {timeout}s (logs: {log_dir})")


def wait_for_job(job_id: str, timeout: float = 600) -> str:
    """The final state of ``job_id`` (squeue lists ended jobs for MinJobAge)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if out and out[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return out[0]
        time.sleep(1)
    raise AssertionError(f"job {job_id} still not ended after {timeout}s")


def submitted_runs(work: Path) -> list[SubmittedRun]:
    """The runs submitted with ``work_dir=work``, oldest first."""
    records = (work / "slurm").glob("*_run.json")
    return [SubmittedRun.load(p) for p in sorted(records, key=lambda p: int(p.name.split("_")[0]))]


def record_times(work: Path) -> dict[str, int]:
    return {
        str(path.relative_to(work)): path.stat().st_mtime_ns
        for path in sorted(work.glob("stage*/*.npz"))
    }


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_task_array_reproduces_a_local_run(
    slurm, run_cli, split, model_overrides, local_run, tmp_path
):
    proc = run_cli(*slurm_overrides(model_overrides, split, tmp_path))
    [run] = submitted_runs(tmp_path / "work")
    assert run.shards == [["vid0", "vid1"], ["vid2", "vid3"]]
    for job_id in run.job_ids:
        assert (tmp_path / "work" / "slurm" / f"{job_id}_0_log.err").is_file()
    assert_same_archives(local_run[0], tmp_path / "submissions")
    # The scores, evaluated by the submitting process once the tasks ended, are the local ones.
    table = [line for line in proc.stdout.splitlines() if line.split()[0] in ARCHIVES]
    assert table and table == [
        line for line in local_run[1].stdout.splitlines() if line.split()[0] in ARCHIVES
    ]
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["stages"]["1"] == {"done": 4, "failed": []}


@pytest.mark.slow
@pytest.mark.slurm
def test_a_killed_task_is_reported_and_a_rerun_completes_only_what_is_missing(
    slurm, run_cli, split, model_overrides, local_run, tmp_path
):
    root = Path(shutil.copytree(split, tmp_path / "split"))
    frame = hold_frame(root, HELD_VIDEO, HELD_FRAME)
    overrides = slurm_overrides(model_overrides, root, tmp_path, "data.validate_frames=false")
    proc = start_cli(*overrides)
    try:
        job_id = wait_until_held(tmp_path / "work" / "slurm")
        subprocess.run(["scancel", job_id], check=True)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        cancel_jobs(tmp_path)
    assert proc.returncode == 1, stderr
    log_file = tmp_path / "work" / "slurm" / f"{job_id}_0_log.err"
    expected = (
        f"shard 1 (job {job_id}) was ended by SLURM (CANCELLED) while on video 'vid3' of "
        f"stage 1 (ReferDINO); log: {log_file}"
    )
    assert expected in stderr
    assert log_file.is_file()
    assert not list((tmp_path / "submissions").glob("*.zip"))  # no archive
    work = tmp_path / "work"
    finished = record_times(work)
    # Shard 0 finished; shard 1 finished stage 1 of vid2 before vid3.
    assert sorted(finished) == [
        "stage1/vid0.npz", "stage1/vid1.npz", "stage1/vid2.npz",
        "stage2/vid0.npz", "stage2/vid1.npz", "stage3/vid0.npz", "stage3/vid1.npz",
    ]  # fmt: skip

    # The rerun, not waiting: it submits the missing videos and a job that finishes the run.
    release_frame(root, HELD_VIDEO, HELD_FRAME, frame)
    rerun = run_cli(*overrides, "launcher.wait=false")
    assert "2 video(s) to process, 2 already finished" in rerun.stderr
    run = submitted_runs(work)[-1]
    assert run.shards == [["vid2"], ["vid3"]]
    assert f"finishing job: {run.finishing_job_id}" in rerun.stdout
    assert f"finish by hand: {run.finish_command()}" in rerun.stdout
    assert wait_for_job(run.finishing_job_id) == "COMPLETED"
    assert_same_archives(local_run[0], tmp_path / "submissions")
    times = record_times(work)
    assert {key: times[key] for key in finished} == finished  # nothing recomputed
    assert len(times) == 12
    # The printed command finishes the run by hand too (here: nothing left to do).
    by_hand = subprocess.run(
        shlex.split(run.finish_command()),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    assert "fused.zip is up to date" in by_hand.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_a_preempted_task_is_requeued_and_resumes_after_its_finished_videos(
    slurm, split, model_overrides, local_run, tmp_path
):
    root = Path(shutil.copytree(split, tmp_path / "split"))
    frame = hold_frame(root, HELD_VIDEO, HELD_FRAME)
    overrides = slurm_overrides(model_overrides, root, tmp_path, "data.validate_frames=false")
    proc = start_cli(*overrides)
    try:
        job_id = wait_until_held(tmp_path / "work" / "slurm")
        # What a pre-empting scheduler sends: submitit checkpoints the task and requeues it.
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        release_frame(root, HELD_VIDEO, HELD_FRAME, frame)
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
        cancel_jobs(tmp_path)
    assert proc.returncode == 0, stderr
    assert_same_archives(local_run[0], tmp_path / "submissions")
    # submitit's own messages are in the task's stdout log.
    log = (tmp_path / "work" / "slurm" / f"{job_id}_0_log.out").read_text()
    assert "this job is preempted" in log and f"Requeued job {job_id}" in log
    events = [
        json.loads(line)
        for line in progress_path(tmp_path / "work" / "slurm", job_id).read_text().splitlines()
    ]
    started = [(e["stage"], e["video_id"]) for e in events if e["event"] == "start"]
    # vid2 was finished before the pre-emption: the requeued task did not redo it.
    assert started.count((1, "vid2")) == 1 and started.count((1, "vid3")) == 2


@pytest.mark.slow
@pytest.mark.slurm
def test_a_detached_run_keeps_its_work_dir_while_a_preempted_task_resumes(
    slurm, run_cli, split, model_overrides, local_run, tmp_path
):
    """``launcher.slurm.wait=false``: the command returns once it has submitted. While the run's
    jobs may run (one task pre-empted and requeued), a second run on the same work_dir is
    refused; the requeued task resumes after its finished videos (their records untouched), and
    the finishing job writes the archives of an uninterrupted run."""
    root = Path(shutil.copytree(split, tmp_path / "split"))
    frame = hold_frame(root, HELD_VIDEO, HELD_FRAME)
    overrides = slurm_overrides(model_overrides, root, tmp_path, "data.validate_frames=false")
    work, log_dir = tmp_path / "work", tmp_path / "work" / "slurm"
    try:
        run_cli(*overrides, "launcher.wait=false")
        [run] = submitted_runs(work)
        holder = read_holder(work / LOCK_FILE)
        assert (holder.run_id, holder.released) == (run.run_id, True)  # the command has ended
        assert holder.slurm_jobs == [run.array_id, run.finishing_job_id]  # ... its jobs go on
        job_id = wait_until_held(log_dir)
        finished = record_times(work)
        assert "stage1/vid2.npz" in finished  # the held task's first video
        # What a pre-empting scheduler sends: submitit checkpoints the task and requeues it.
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        other = slurm_overrides(
            model_overrides,
            root,
            tmp_path,
            "data.validate_frames=false",
            "stage2.score_threshold=0.3",
        )
        refused = run_cli(*other, check=False)
        release_frame(root, HELD_VIDEO, HELD_FRAME, frame)
        assert wait_for_job(run.finishing_job_id) == "COMPLETED"
    finally:
        cancel_jobs(tmp_path)
    assert refused.returncode == 1, refused.stderr
    [line] = [line for line in refused.stderr.splitlines() if "ERROR" in line]
    assert f"work_dir {work} is in use by a launcher=slurm run (pid " in line
    assert "are still queued or running" in line
    assert f"scancel {run.array_id} {run.finishing_job_id}" in line
    assert len(submitted_runs(work)) == 1  # nothing submitted
    assert_same_archives(local_run[0], tmp_path / "submissions")
    log = (log_dir / f"{job_id}_0_log.out").read_text()
    assert "this job is preempted" in log and f"Requeued job {job_id}" in log
    events = [json.loads(line) for line in progress_path(log_dir, job_id).read_text().splitlines()]
    started = [(e["stage"], e["video_id"]) for e in events if e["event"] == "start"]
    assert started.count((1, "vid2")) == 1 and started.count((1, "vid3")) == 2
    times = record_times(work)
    assert {key: times[key] for key in finished} == finished and len(times) == 12
    assert json.loads((work / "report.json").read_text())["status"] == "ok"
    holder = read_holder(work / LOCK_FILE)  # the finishing job's, as the same run
    assert (holder.run_id, holder.slurm_jobs, holder.released) == (run.run_id, [], True)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_refused_submission_is_one_line(slurm, run_cli, split, model_overrides, tmp_path):
    overrides = slurm_overrides(model_overrides, split, tmp_path, "launcher.partition=nowhere")
    proc = run_cli(*overrides, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert "sbatch refused the job" in errors[0] and "partition" in errors[0].lower()
