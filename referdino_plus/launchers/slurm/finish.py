"""The end of a submitted run: waiting for its tasks, then its archives, scores and report
(:func:`referdino_plus.pipeline.finish`), by the submitting process (``launcher.slurm.wait``),
the finishing job, or ``run_pipeline.py finish``."""

from __future__ import annotations

import logging

from referdino_plus.config import SlurmOptions, from_yaml
from referdino_plus.launchers.slurm.outcomes import TaskOutcome, conclude
from referdino_plus.launchers.slurm.record import SubmittedRun
from referdino_plus.launchers.slurm.watch import wait_for_tasks
from referdino_plus.pipeline import (
    PipelineError,
    RunResult,
    finish,
    reporting,
    stage_fingerprints,
)
from referdino_plus.runtime import setup_logging
from referdino_plus.workdir_lock import hold_work_dir
from rvos.splits import Split

logger = logging.getLogger(__name__)


def wait_for_run(run: SubmittedRun, options: SlurmOptions) -> list[TaskOutcome]:
    """:func:`wait_for_tasks`; interrupted (Ctrl-C), it says how to follow and finish the run,
    whose tasks go on."""
    try:
        return wait_for_tasks(run, options)
    except KeyboardInterrupt:
        logger.warning(
            "stopped waiting; the tasks go on (squeue --jobs=%s; scancel %s stops them). "
            "Finish the run later with: %s",
            run.array_id,
            run.array_id,
            run.finish_command(),
        )
        raise


def collect(run: SubmittedRun) -> RunResult:
    """Wait for ``run``'s tasks, then finish it: archives and scores when every task succeeded
    (and every video is finished), ``work_dir/report.json`` in any case; all within the lock
    of ``work_dir``, taken as the submitted run.

    Raises:
        WorkDirBusy: another process holds the lock (e.g. another ``finish`` of the run).
    """
    cfg = from_yaml(run.config)
    # The same run as the one submitted (its id): not kept out by its own jobs.
    with hold_work_dir(
        cfg.work_dir, cfg.run, run_id=run.run_id or None, command=run.command
    ) as lock:
        outcomes = wait_for_run(run, cfg.launcher.slurm)
        lock.forget_jobs()  # every task has ended
        fingerprints = stage_fingerprints(cfg)
        split = Split(cfg.data.root, cfg.data.layout)
        result = RunResult()
        with reporting(cfg, fingerprints, result, command=run.command) as status:
            status.split = split
            conclude(cfg, fingerprints, split, outcomes, run.stages, result)
            finish(cfg, fingerprints, split, result, status, score=run.evaluate)
    return result


def finish_recorded_run(record: str) -> None:
    """What the finishing job runs (``launcher.slurm.wait=false``): :func:`collect` the run of
    ``record``, the ``<array>_run.json`` path.

    Raises:
        PipelineError: some task failed (the job ends failed; the messages are in its log).
    """
    setup_logging()
    result = collect(SubmittedRun.load(record))
    if not result.ok:
        raise PipelineError("some tasks failed; no archives were written")
