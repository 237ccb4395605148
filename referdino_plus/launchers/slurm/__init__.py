"""``launcher=slurm``: the stages on a SLURM cluster, through submitit.

One job array: task *i* runs the requested stages on shard *i* of the sorted videos that still
need work (:func:`rvos.workers.shard`, as ``--gids`` shards them), in its own process on its GPU
(the in-process worker of :func:`rvos.workers.run_sharded`), skipping what is finished. Once
every task has ended, the archives, their scores and the report are written
(:func:`referdino_plus.pipeline.finish`): by the submitting process when it waits
(``launcher.slurm.wait``), otherwise by a job that starts after the array (``run_pipeline.py finish``
does the same by hand).

A task that fails, or that SLURM ends (cancelled, out of memory or time, node failure), is
reported with its shard, its log file and the video it was on; the other tasks' finished videos
are kept and the run ends non-zero without archives: the same command then submits only what is
missing. A pre-empted task, or one about to run out of time, is requeued through submitit's
checkpointing (``launcher.slurm.max_requeues`` times for time-outs) and resumes after its finished
videos.

The run keeps ``work_dir`` to itself (:mod:`referdino_plus.workdir_lock`): the submitting process
holds its lock and records the jobs it submitted there, so that no other run takes the folder
while they may run, even once it has returned (``launcher.slurm.wait=false``) or was stopped; the
tasks carry the run's id and check the lock still names their run; what finishes the run takes
the lock again as the same run.

Task states come from ``squeue`` (which lists ended jobs for the cluster's ``MinJobAge``) and
from the tasks' result files: submitit's own watcher asks ``sacct``, which needs an accounting
database that not every cluster has.

``launcher.slurm.log_dir`` holds, besides submitit's job scripts and pickles:

    <job>_0_log.err, <job>_0_log.out   a task's log (ours goes to .err), <job> = <array>_<task>
    <job>_progress.jsonl               the task's events: stage set-up, video started/done/failed
    <array>_run.json                   the run's record, read by ``run_pipeline.py finish``

Modules, by concern: :mod:`.submit` (checks before submitting; the array and the finishing job),
:mod:`.task` (what a task runs), :mod:`.journal` (a task's progress events), :mod:`.record` (a
submitted run's record), :mod:`.queue` (what ``squeue`` says of jobs), :mod:`.watch` (``squeue``
and result files until every task ended), :mod:`.outcomes` (how the tasks ended, merged into the
run's outcome), :mod:`.finish` (the run's archives and report once its tasks ended). The settings are ``launcher.slurm.<key>``
(:class:`referdino_plus.config.SlurmOptions`), also spelled ``launcher.<key>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from referdino_plus.config import PipelineConfig
from referdino_plus.launchers import Launcher, LaunchRecord, RunPlan
from referdino_plus.launchers.slurm.finish import wait_for_run
from referdino_plus.launchers.slurm.outcomes import conclude
from referdino_plus.launchers.slurm.submit import (
    check_cluster_paths,
    check_slurm_commands,
    submit_array,
    submit_finishing_job,
)
from referdino_plus.launchers.slurm.task import code_environment
from referdino_plus.pipeline import pending_by_stage
from referdino_plus.stages import Fingerprints
from rvos.interrupts import signals_deferred
from rvos.workers import RunSummary, shard

logger = logging.getLogger(__name__)


class SlurmLauncher(Launcher):
    """One SLURM job array over the videos that still need work (``launcher.slurm``)."""

    def check_settings(self, stages: Sequence[int]) -> None:
        """Raises: ValueError: a path the nodes could not reach (relative)."""
        check_cluster_paths(self.cfg, stages)

    def check(self, stages: Sequence[int]) -> None:
        self.check_settings(stages)
        check_slurm_commands()

    def describe(self) -> str:
        return f"SLURM ({self.cfg.launcher.slurm.tasks} tasks)"

    def launch(self, plan: RunPlan, result: LaunchRecord) -> None:
        """Submit one task per shard of the videos some stage has to process; then wait for
        them (``launcher.slurm.wait``) or hand the run to a job that finishes it once they have
        ended (``result.handoff``).

        Raises:
            PipelineError: sbatch refused the job, or records are missing after the tasks.
        """
        cfg, options = plan.cfg, plan.cfg.launcher.slurm
        todo = sorted(set().union(*plan.todo.values()))  # as videos_to_process
        environment = code_environment()
        logger.info(
            "%d video(s) to process, %d already finished; tasks run %s with the code in %s",
            len(todo),
            len(plan.split.video_ids) - len(todo),
            environment["python"],
            environment["code"],
        )
        if not todo:
            result.stage_summaries = {stage: RunSummary() for stage in plan.stages}
            return
        shards = shard(todo, min(options.tasks, len(todo)))
        lock = plan.lock
        # A submission and its record in work_dir's lock are whole: a stop waits for them.
        with signals_deferred():
            run = submit_array(
                cfg,
                plan.stages,
                shards,
                plan.overwrite,
                evaluate=plan.evaluate,
                run_id=lock.run_id,
                command=lock.command,
            )
            lock.record_jobs(run.array_ids)
            if not options.wait:
                run.finishing_job_id = submit_finishing_job(run, options)
                lock.record_jobs([run.finishing_job_id])
                run.save()
        if not options.wait:
            logger.info(
                "submitted job %s: it finishes the run once job %s has ended",
                run.finishing_job_id,
                run.array_id,
            )
            result.handoff = run
            return
        try:
            outcomes = wait_for_run(run, options)
        except KeyboardInterrupt:
            result.handoff = run  # the tasks go on; `finish` ends the run
            raise
        lock.forget_jobs()  # every task has ended
        conclude(cfg, plan.fingerprints, plan.split, outcomes, plan.stages, result)


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
