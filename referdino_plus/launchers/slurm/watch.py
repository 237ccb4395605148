"""Watching a submitted array until every task has ended: task states from ``squeue`` (which
lists ended jobs for the cluster's ``MinJobAge``) and the tasks' result files. (submitit's own
watcher asks ``sacct``, which needs an accounting database that not every cluster has.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import submitit
from submitit.core.utils import pickle_load

from referdino_plus.config import SlurmOptions
from referdino_plus.launchers.slurm.journal import last_position, progress_path
from referdino_plus.launchers.slurm.outcomes import TaskOutcome, report_task, task_ok
from referdino_plus.launchers.slurm.queue import (  # noqa: F401 - parse_queue: also read from here
    ENDED_STATES,
    RUNNING_STATES,
    QueueEntry,
    parse_queue,
    queue_states,
)
from referdino_plus.launchers.slurm.record import SubmittedRun
from rvos.progress import progress_bar

logger = logging.getLogger(__name__)


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


def wait_for_tasks(run: SubmittedRun, options: SlurmOptions) -> list[TaskOutcome]:
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
            time.sleep(options.poll_s)


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
    options: SlurmOptions,
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
    if time.monotonic() - first_seen < options.result_wait_s:
        return None
    error = f"was ended by SLURM ({state})" if state else "left the queue without a result"
    position = last_position(progress_path(run.log_dir, job.job_id))
    return TaskOutcome(index, job.job_id, job.paths.stderr, {}, error, position)
