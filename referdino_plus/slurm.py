"""The pipeline on a SLURM cluster (``launcher=slurm``), through submitit.

One job array: task *i* runs the requested stages on shard *i* of the sorted videos that still
need work (:func:`rvos.workers.shard`, as ``--gids`` shards them), in its own process on its GPU
(the in-process worker of :func:`rvos.workers.run_sharded`), skipping what is finished. Once
every task has ended, the archives, their scores and the report are written
(:func:`referdino_plus.pipeline.finish`): by the submitting process when it waits
(``launcher.wait``), otherwise by a job that starts after the array (``run_pipeline.py finish``
does the same by hand).

A task that fails, or that SLURM ends (cancelled, out of memory or time, node failure), is
reported with its shard, its log file and the video it was on; the other tasks' finished videos
are kept and the run ends non-zero without archives: the same command then submits only what is
missing. A pre-empted task, or one about to run out of time, is requeued through submitit's
checkpointing (``launcher.max_requeues`` times for time-outs) and resumes after its finished
videos.

Task states come from ``squeue`` (which lists ended jobs for the cluster's ``MinJobAge``) and
from the tasks' result files: submitit's own watcher asks ``sacct``, which needs an accounting
database that not every cluster has.

``launcher.log_dir`` holds, besides submitit's job scripts and pickles:

    <job>_0_log.err, <job>_0_log.out   a task's log (ours goes to .err), <job> = <array>_<task>
    <job>_progress.jsonl               the task's events: stage set-up, video started/done/failed
    <array>_run.json                   the run's record, read by ``run_pipeline.py finish``
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, pickle_load
from submitit.helpers import Checkpointable

from referdino_plus.archives import set_aside_stale_archives
from referdino_plus.config import LauncherOptions, PipelineConfig, from_yaml, to_yaml
from referdino_plus.pipeline import (
    STAGE_JOBS,
    STAGE_NAMES,
    Fingerprints,
    PipelineError,
    RunResult,
    check_first_inputs,
    check_inputs,
    pending_by_stage,
    pending_videos,
    save_report,
    save_resolved_config,
    stage_devices,
    stage_fingerprints,
    stage_job,
    write_outputs,
)
from referdino_plus.runtime import setup_logging
from rvos.io import atomic_output
from rvos.progress import progress_bar
from rvos.splits import Split
from rvos.workers import Failure, RunSummary, run_sharded, shard

logger = logging.getLogger(__name__)

# squeue states after which a job does not run again (anything else may still run: pending,
# running, completing, requeued, suspended, ...).
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})


# ----------------------------------------------------------------------------- submit-time checks


def cluster_paths(cfg: PipelineConfig, stages: Sequence[int]) -> dict[str, str]:
    """``{key: path}`` of every file and folder the tasks of ``stages`` read or write."""
    paths = {
        "work_dir": cfg.work_dir,
        "submission_dir": cfg.submission_dir,
        "data.root": cfg.data.root,
        "launcher.log_dir": str(cfg.launcher.log_dir),
    }
    legacy_dir = cfg.stage1.legacy_dir
    if legacy_dir and (1 in stages or 2 in stages):
        paths["stage1.legacy_dir"] = legacy_dir
    if 1 in stages and not legacy_dir:
        paths["stage1.checkpoint"] = cfg.stage1.checkpoint
        if Path(cfg.stage1.model).suffix in (".yaml", ".yml"):
            paths["stage1.model"] = cfg.stage1.model
        if cfg.stage1.text_encoder:
            paths["stage1.text_encoder"] = cfg.stage1.text_encoder
    if 2 in stages:
        checkpoint = cfg.stage2.checkpoint
        # SAM 3's weights may be a hub id (e.g. facebook/sam3), which names no file here: each
        # node reads it from the shared Hugging Face cache (README, SAM 3).
        if str(cfg.stage2.tracker) != "sam3" or Path(checkpoint).expanduser().exists():
            paths["stage2.checkpoint"] = checkpoint
        if Path(cfg.stage2.model).suffix in (".yaml", ".yml"):
            paths["stage2.model"] = cfg.stage2.model
    return paths


def check_cluster_paths(cfg: PipelineConfig, stages: Sequence[int]) -> None:
    """Every path a task of ``stages`` uses is absolute: the nodes share the filesystem, not this
    shell's folder. (That the files are there is the preflight's part, as for a local run.)

    Raises:
        ValueError: one line naming the first relative path's key.
    """
    for key, value in cluster_paths(cfg, stages).items():
        if not Path(value).is_absolute():
            raise ValueError(
                f"{key}={value}: launcher=slurm needs an absolute path, on a filesystem the "
                "cluster's nodes share"
            )


def check_slurm_commands() -> None:
    """Raises: PipelineError: ``sbatch`` or ``squeue`` is not on this machine."""
    for command in ("sbatch", "squeue"):
        if shutil.which(command) is None:
            raise PipelineError(
                f"launcher=slurm: `{command}` not found: submit from a machine of the SLURM "
                "cluster (a local test cluster: sudo bash scripts/slurm_local.sh start)"
            )


# ----------------------------------------------------------------------------- task progress


def progress_path(log_dir: str | Path, job_id: str) -> Path:
    """Where the task ``job_id`` (``<array>_<task>``) records its events."""
    return Path(log_dir) / f"{job_id}_progress.jsonl"


def record_event(path: Path, stage: int, event: str, video_id: str | None = None) -> None:
    """Append one event line, opening and closing the file each time: a killed task loses
    nothing, and other nodes see the line once it is closed."""
    line = json.dumps({"stage": stage, "event": event, "video_id": video_id, "time": time.time()})
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


@dataclass(frozen=True)
class TaskPosition:
    """Where a task was at its last event: in ``stage``, on ``video_id``, or else loading the
    stage's models (``loading``) or between two videos."""

    stage: int
    video_id: str | None
    loading: bool

    def describe(self) -> str:
        stage = STAGE_NAMES[self.stage]
        if self.video_id is not None:
            return f"while on video {self.video_id!r} of {stage}"
        if self.loading:
            return f"while loading the models of {stage}"
        return f"between two videos of {stage}"


def last_position(path: Path) -> TaskPosition | None:
    """The position after a task's last recorded event (``None``: it recorded none)."""
    if not path.is_file():
        return None
    position = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        kind, stage = event["event"], event["stage"]
        if kind == "start":
            position = TaskPosition(stage, event["video_id"], loading=False)
        else:
            position = TaskPosition(stage, None, loading=kind == "stage")
    return position


def describe_position(position: TaskPosition | None) -> str:
    return position.describe() if position else "before its first stage"


# ----------------------------------------------------------------------------- the array task


def code_environment() -> dict[str, str]:
    """The interpreter and the code of this process: what every task must run too."""
    import referdino_plus

    return {"python": sys.executable, "code": str(Path(referdino_plus.__file__).resolve().parent)}


@dataclass
class ShardTask(Checkpointable):
    """What array task ``shard`` runs: the requested stages on its videos, in this process.

    Picklable (submitit sends it to the node). Requeued after a pre-emption or a time-out
    (:meth:`checkpoint`, submitit's), it resumes after the videos it finished.
    """

    cfg: PipelineConfig
    stages: list[int]
    shard: int
    video_ids: list[str]
    overwrite: bool
    environment: dict[str, str]  # the submitting process's code_environment()
    # stage -> videos this task has finished: a requeued task skips them, even with overwrite.
    finished: dict[int, list[str]] = field(default_factory=dict)

    def __call__(self) -> dict[int, RunSummary]:
        """Run the stages in order, stopping after one that failed.

        Returns:
            per stage, the videos done and failed (as :func:`rvos.workers.run_sharded`).
        """
        setup_logging()
        logging.getLogger("submitit").propagate = False  # it has its own handlers
        if code_environment() != self.environment:
            raise PipelineError(
                f"this task runs {code_environment()}, the run was submitted from "
                f"{self.environment}: submit from a folder the nodes share, with an environment "
                "they see at the same path"
            )
        import torch

        torch.set_num_threads(self.cfg.launcher.cpus_per_task)
        job_id = submitit.JobEnvironment().job_id
        progress = progress_path(self.cfg.launcher.log_dir, job_id)
        device = "cuda:0" if self.cfg.launcher.gpus_per_task else "cpu"
        logger.info(
            "shard %d (job %s): %d video(s), stages %s, on %s",
            self.shard,
            job_id,
            len(self.video_ids),
            self.stages,
            device,
        )
        fingerprints = stage_fingerprints(self.cfg)
        summaries: dict[int, RunSummary] = {}
        for stage in sorted(self.stages):
            todo = self._todo(stage, fingerprints)
            if not todo:
                summaries[stage] = RunSummary()
                continue
            record_event(progress, stage, "stage")
            summary = run_sharded(
                STAGE_JOBS[stage],
                stage_job(self.cfg, fingerprints, stage),
                todo,
                stage_devices(stage, [device]),
                desc=f"{STAGE_NAMES[stage]} shard {self.shard}",
                on_event=partial(self._on_event, progress, stage),
            )
            summaries[stage] = summary
            if not summary.ok:
                break
        return summaries

    def _todo(self, stage: int, fingerprints: Fingerprints) -> list[str]:
        """The shard's videos ``stage`` still has to process (its inputs checked)."""
        check_inputs(self.cfg, fingerprints, stage, self.video_ids)
        work_dir = Path(self.cfg.work_dir)
        pending = pending_videos(
            work_dir, stage, self.video_ids, fingerprints[stage], self.overwrite
        )
        finished = set(self.finished.get(stage, ()))
        return [video_id for video_id in pending if video_id not in finished]

    def _on_event(
        self, progress: Path, stage: int, kind: str, _worker: int, video_id: str | None, _: str
    ) -> None:
        record_event(progress, stage, kind, video_id)
        if kind == "done" and video_id is not None:
            self.finished.setdefault(stage, []).append(video_id)


# ----------------------------------------------------------------------------- a submitted run


@dataclass
class SubmittedRun:
    """A submitted array: what the waiting process, or the finishing job, collects. Saved as
    ``<log_dir>/<array>_run.json``."""

    job_ids: list[str]  # task i's SLURM job id: <array>_<i> (a lone task: <job>)
    shards: list[list[str]]  # task i's videos
    stages: list[int]
    log_dir: str
    config: str  # the resolved configuration (YAML)
    evaluate: bool  # score the archives (the preflight found the ground truth complete)
    finishing_job_id: str | None = None  # launcher.wait=false: the job that finishes the run

    @property
    def array_id(self) -> str:
        return self.job_ids[0].split("_")[0]

    @property
    def record_path(self) -> Path:
        return Path(self.log_dir) / f"{self.array_id}_run.json"

    def save(self) -> Path:
        with atomic_output(self.record_path) as tmp:
            tmp.write_text(json.dumps(self.__dict__, indent=1))
        return self.record_path

    @classmethod
    def load(cls, path: str | Path) -> SubmittedRun:
        """Raises: PipelineError: not a run record."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise PipelineError(f"{path}: not a run record of launcher=slurm ({err})") from None

    def jobs(self) -> list[submitit.SlurmJob]:
        return [submitit.SlurmJob(folder=self.log_dir, job_id=job_id) for job_id in self.job_ids]

    def finish_command(self) -> str:
        """The command that waits for the tasks and finishes the run (archives, scores)."""
        return shlex.join([sys.executable, "-m", "referdino_plus", "finish", str(self.record_path)])


def build_executor(options: LauncherOptions, *, gpus: int) -> submitit.AutoExecutor:
    """A submitit executor with ``options``' resources, asking for ``gpus`` GPUs per job."""
    executor = submitit.AutoExecutor(
        folder=options.log_dir, cluster="slurm", slurm_max_num_timeout=options.max_requeues
    )
    executor.update_parameters(
        name=options.job_name,
        timeout_min=options.timeout_min,
        cpus_per_task=options.cpus_per_task,
        gpus_per_node=gpus or None,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_qos=options.qos,
        slurm_setup=list(options.setup) or None,
        slurm_additional_parameters=dict(options.sbatch_args) or None,
    )
    return executor


def submit_array(
    cfg: PipelineConfig,
    stages: Sequence[int],
    shards: list[list[str]],
    overwrite: bool,
    *,
    evaluate: bool,
) -> SubmittedRun:
    """Submit one task per shard; save and return the run's record.

    Raises:
        PipelineError: sbatch refused the job (its message).
    """
    options = cfg.launcher
    Path(str(options.log_dir)).mkdir(parents=True, exist_ok=True)
    executor = build_executor(options, gpus=int(options.gpus_per_task or 0))
    tasks = [
        ShardTask(cfg, sorted(stages), index, video_ids, overwrite, code_environment())
        for index, video_ids in enumerate(shards)
    ]
    with sbatch_errors():
        jobs = executor.submit_array(tasks)
    run = SubmittedRun(
        job_ids=[job.job_id for job in jobs],
        shards=shards,
        stages=sorted(stages),
        log_dir=str(options.log_dir),
        config=to_yaml(cfg),
        evaluate=evaluate,
    )
    run.save()
    logger.info(
        "submitted %d task(s) as SLURM job %s; logs: %s/%s_<task>_0_log.err",
        len(jobs),
        run.array_id,
        run.log_dir,
        run.array_id,
    )
    return run


def submit_finishing_job(run: SubmittedRun, options: LauncherOptions) -> str:
    """Submit the job that finishes ``run`` once its tasks have ended; returns its job id."""
    executor = build_executor(options, gpus=0)
    array_ids = sorted({job_id.split("_")[0] for job_id in run.job_ids})
    executor.update_parameters(
        name=f"{options.job_name}-finish", slurm_dependency=f"afterany:{':'.join(array_ids)}"
    )
    with sbatch_errors():
        job = executor.submit(finish_recorded_run, str(run.record_path))
    return job.job_id


@contextlib.contextmanager
def sbatch_errors() -> Iterator[None]:
    """Turn a refused submission into a one-line :class:`PipelineError` (submitit would also
    print sbatch's error output)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (FailedJobError, FailedSubmissionError, OSError) as err:
        lines = [line for line in str(err).splitlines() if "error" in line.lower()]
        reason = lines[-1].strip() if lines else " ".join(str(err).split())
        raise PipelineError(f"sbatch refused the job: {reason}") from None


# ----------------------------------------------------------------------------- waiting


@dataclass
class TaskOutcome:
    """How one task ended."""

    shard: int
    job_id: str
    log_file: Path
    summaries: dict[int, RunSummary]  # what the task returned (empty when it did not)
    error: str | None = None  # why it did not return: its exception, or how SLURM ended it
    position: TaskPosition | None = None  # where it was then


class QueueEntry(NamedTuple):
    """A job as ``squeue`` lists it."""

    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ...
    reason: str  # why it waits (e.g. Resources, Priority, PartitionConfig); "None" if it does not


def queue_states(job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
    """The jobs ``squeue`` lists (ended ones too, for ``MinJobAge``), by job id; ``None`` when
    squeue could not answer (the controller busy or restarting)."""
    array_ids = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T %r"]
    proc = subprocess.run(
        [*command, f"--jobs={','.join(array_ids)}"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}  # every job has left the queue
        logger.warning("squeue failed, asking again later: %s", " ".join(proc.stderr.split()))
        return None
    return parse_queue(proc.stdout)


def parse_queue(text: str) -> dict[str, QueueEntry]:
    """``squeue --array --format='%i %T %r'`` lines by job id (``<array>_<task>``)."""
    entries = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) >= 2:
            entries[fields[0]] = QueueEntry(fields[1], fields[2] if len(fields) == 3 else "None")
    return entries


def read_outcome(run: SubmittedRun, shard_index: int, job: submitit.SlurmJob) -> TaskOutcome:
    """The outcome of a task whose result file exists."""
    log_file = job.paths.stderr
    status, value = pickle_load(job.paths.result_pickle)
    if status == "success":
        return TaskOutcome(shard_index, job.job_id, log_file, value)
    trace = [line for line in str(value).splitlines() if line.strip()]
    error = f"raised {trace[-1].strip()}" if trace else "raised an error"
    position = last_position(progress_path(run.log_dir, job.job_id))
    return TaskOutcome(shard_index, job.job_id, log_file, {}, error, position)


def wait_for_tasks(run: SubmittedRun, options: LauncherOptions) -> list[TaskOutcome]:
    """Poll the queue and the result files until every task of ``run`` has ended; log each
    failed task as it ends.

    Progress: a bar of ended tasks, with the number done, failed, running and pending.
    """
    jobs = run.jobs()
    outcomes: dict[int, TaskOutcome] = {}
    ended_at: dict[int, float] = {}
    with progress_bar(total=len(jobs), desc=f"SLURM job {run.array_id}", unit="task") as bar:
        while True:
            states = queue_states(run.job_ids)
            for index, job in enumerate(jobs):
                if index in outcomes:
                    continue
                outcome = task_outcome(run, index, job, states, ended_at, options)
                if outcome is not None:
                    outcomes[index] = outcome
                    report_task(outcome)
                    bar.update(1)
            bar.set_postfix_str(describe_progress(jobs, outcomes, states), refresh=True)
            if len(outcomes) == len(jobs):
                return [outcomes[index] for index in range(len(jobs))]
            time.sleep(float(options.poll_s or 1))


def describe_progress(
    jobs: Sequence[submitit.SlurmJob],
    outcomes: dict[int, TaskOutcome],
    states: dict[str, QueueEntry] | None,
) -> str:
    """``done N, failed N, running N, pending N (their reasons)`` of an array's tasks."""
    failed = sum(not task_ok(outcome) for outcome in outcomes.values())
    waiting = [
        (states or {}).get(job.job_id) for index, job in enumerate(jobs) if index not in outcomes
    ]
    # Ended tasks whose result is still awaited count as running.
    running = sum(e is not None and e.state in RUNNING_STATES | ENDED_STATES for e in waiting)
    reasons = sorted(
        {e.reason for e in waiting if e and e.state == "PENDING" and e.reason != "None"}
    )
    text = (
        f"done {len(outcomes) - failed}, failed {failed}, running {running}, "
        f"pending {len(waiting) - running}"
    )
    return f"{text} ({', '.join(reasons)})" if reasons else text


def task_outcome(
    run: SubmittedRun,
    index: int,
    job: submitit.SlurmJob,
    states: dict[str, QueueEntry] | None,
    ended_at: dict[int, float],
    options: LauncherOptions,
) -> TaskOutcome | None:
    """How task ``index`` ended, or ``None`` while it may still run.

    A task that ended without a result file gets ``options.result_wait_s`` for the file to
    appear (a network filesystem may show it late) before it is reported as ended by SLURM.
    """
    if job.paths.result_pickle.exists():
        return read_outcome(run, index, job)
    if states is None:
        return None
    entry = states.get(job.job_id)
    state = entry.state if entry else None
    if state is not None and state not in ENDED_STATES:
        ended_at.pop(index, None)  # requeued
        return None
    first_seen = ended_at.setdefault(index, time.monotonic())
    if time.monotonic() - first_seen < float(options.result_wait_s or 0):
        return None
    error = f"was ended by SLURM ({state})" if state else "left the queue without a result"
    position = last_position(progress_path(run.log_dir, job.job_id))
    return TaskOutcome(index, job.job_id, job.paths.stderr, {}, error, position)


def task_ok(outcome: TaskOutcome) -> bool:
    return outcome.error is None and all(s.ok for s in outcome.summaries.values())


def report_task(outcome: TaskOutcome) -> None:
    """Log a task's failures, one line each: its shard, job, the video, why and its log."""
    where = f"shard {outcome.shard} (job {outcome.job_id})"
    if outcome.error is not None:
        position = describe_position(outcome.position)
        logger.error("%s %s %s; log: %s", where, outcome.error, position, outcome.log_file)
    for stage, summary in sorted(outcome.summaries.items()):
        for failure in summary.failures:
            logger.error(
                "%s: %s failed on %s: %s; log: %s",
                where,
                STAGE_NAMES[stage],
                failure.what,
                failure.error,
                outcome.log_file,
            )


def merge_outcomes(outcomes: Sequence[TaskOutcome], stages: Sequence[int]) -> RunResult:
    """The tasks' outcomes as one :class:`RunResult` (failures named by shard and job)."""
    result = RunResult(stage_summaries={stage: RunSummary() for stage in sorted(stages)})
    for outcome in outcomes:
        device = f"slurm job {outcome.job_id}"
        for stage, summary in outcome.summaries.items():
            merged = result.stage_summaries[stage]
            merged.done.extend(summary.done)
            merged.failures.extend(
                Failure(
                    outcome.shard,
                    device,
                    f.video_id,
                    f"{f.error}; log: {outcome.log_file}",
                    f.details,
                )
                for f in summary.failures
            )
        if outcome.error is not None:
            position = outcome.position
            stage = position.stage if position else min(stages)
            video_id = position.video_id if position else None
            message = f"{outcome.error} {describe_position(position)}; log: {outcome.log_file}"
            result.stage_summaries[stage].failures.append(
                Failure(outcome.shard, device, video_id, message)
            )
    return result


def collect(run: SubmittedRun) -> RunResult:
    """Wait for ``run``'s tasks, then finish it: archives and scores when every task succeeded
    (and every video is finished), ``work_dir/report.json`` in any case."""
    cfg = from_yaml(run.config)
    try:
        outcomes = wait_for_tasks(run, cfg.launcher)
    except KeyboardInterrupt:
        logger.warning(
            "stopped waiting; the tasks go on (squeue --jobs=%s; scancel %s stops them). "
            "Finish the run later with: %s",
            run.array_id,
            run.array_id,
            run.finish_command(),
        )
        raise
    result = merge_outcomes(outcomes, run.stages)
    fingerprints = stage_fingerprints(cfg)
    split = Split(cfg.data.root, cfg.data.layout)
    status, error = "failed", ""
    try:
        if result.ok:
            check_complete(cfg, fingerprints, split, run.stages)
            write_outputs(cfg, fingerprints, split, result, score=run.evaluate)
            status = "ok"
        else:
            failed = sum(not task_ok(outcome) for outcome in outcomes)
            error = f"{failed} of {len(outcomes)} task(s) failed"
            logger.error(
                "%s (see above). Finished videos are kept; rerun the same command to submit "
                "only the missing ones.",
                error,
            )
    except Exception as err:
        error = " ".join(str(err).split())
        raise
    finally:
        result.report = save_report(cfg, fingerprints, split, result, status=status, error=error)
    return result


def check_complete(
    cfg: PipelineConfig, fingerprints: Fingerprints, split: Split, stages: Sequence[int]
) -> None:
    """Raises: PipelineError: a stage's records are still missing after successful tasks."""
    for stage in stages:
        missing = pending_videos(
            Path(cfg.work_dir), stage, split.video_ids, fingerprints[stage], False
        )
        if missing:
            raise PipelineError(
                f"{STAGE_NAMES[stage]}: {len(missing)} video(s) have no finished record after "
                f"the tasks ({', '.join(missing[:5])}); rerun the same command"
            )


def finish_recorded_run(record: str) -> None:
    """What the finishing job runs (``launcher.wait=false``): :func:`collect` the run of
    ``record``, the ``<array>_run.json`` path.

    Raises:
        PipelineError: some task failed (the job ends failed; the messages are in its log).
    """
    setup_logging()
    result = collect(SubmittedRun.load(record))
    if not result.ok:
        raise PipelineError("some tasks failed; no archives were written")


# ----------------------------------------------------------------------------- the entry point


def videos_to_process(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    stages: Sequence[int],
    video_ids: Sequence[str],
    overwrite: bool,
) -> list[str]:
    """The sorted videos of which some requested stage's record is missing or stale."""
    pending = pending_by_stage(cfg, fingerprints, stages, video_ids, overwrite)
    return sorted(set().union(*pending.values()))


def run_on_slurm(
    cfg: PipelineConfig, *, stages: Sequence[int], overwrite: bool = False
) -> RunResult | SubmittedRun:
    """Submit ``stages`` over the split's unfinished videos as one job array.

    Returns:
        with ``launcher.wait``, the finished run (as :func:`referdino_plus.pipeline.run`);
        otherwise the submitted run, which a dependent job finishes.
    Raises:
        ValueError: a relative path (:func:`check_cluster_paths`).
        PreflightError: what a local run would find missing (model files, folders, frames).
        PipelineError: the SLURM commands are missing, a stage's inputs are, or sbatch refused
            the job.
    """
    from referdino_plus.preflight import open_split, preflight

    stages = sorted(stages)
    check_cluster_paths(cfg, stages)
    check_slurm_commands()
    fingerprints = stage_fingerprints(cfg)
    split = open_split(cfg, stages)
    pending = pending_by_stage(cfg, fingerprints, stages, split.video_ids, overwrite)
    flight = preflight(cfg, split, stages, pending=pending)
    check_first_inputs(cfg, fingerprints, split, stages)
    # Everything checked: only now are archives of another configuration moved.
    save_resolved_config(cfg, Path(cfg.work_dir))
    set_aside_stale_archives(Path(cfg.submission_dir), fingerprints)
    todo = sorted(set().union(*pending.values()))  # as videos_to_process
    environment = code_environment()
    logger.info(
        "%d video(s) to process, %d already finished; tasks run %s with the code in %s",
        len(todo),
        len(split.video_ids) - len(todo),
        environment["python"],
        environment["code"],
    )
    if not todo:
        result = RunResult(stage_summaries={stage: RunSummary() for stage in stages})
        write_outputs(cfg, fingerprints, split, result, score=flight.evaluate)
        result.report = save_report(cfg, fingerprints, split, result, status="ok", error="")
        return result
    shards = shard(todo, min(int(cfg.launcher.tasks or 1), len(todo)))
    run = submit_array(cfg, stages, shards, overwrite, evaluate=flight.evaluate)
    if cfg.launcher.wait:
        return collect(run)
    run.finishing_job_id = submit_finishing_job(run, cfg.launcher)
    run.save()
    logger.info(
        "submitted job %s: it finishes the run once job %s has ended",
        run.finishing_job_id,
        run.array_id,
    )
    return run
