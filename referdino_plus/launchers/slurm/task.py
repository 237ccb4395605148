"""The array task: what task *i* of a ``launcher=slurm`` run executes on its node."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from referdino_plus.config import PipelineConfig
from referdino_plus.launchers.slurm.journal import progress_path, record_event
from referdino_plus.pipeline import (
    PipelineError,
    check_inputs,
    pending_videos,
    stage_fingerprints,
)
from referdino_plus.runtime import setup_logging
from referdino_plus.stages import Fingerprints, get_stage
from referdino_plus.workdir_lock import check_run_holds
from rvos.workers import RunSummary, run_sharded

logger = logging.getLogger(__name__)


def code_environment() -> dict[str, str]:
    """The interpreter and the code of this process: what every task must run too."""
    import referdino_plus

    return {"python": sys.executable, "code": str(Path(referdino_plus.__file__).resolve().parent)}


@dataclass
class ShardTask(Checkpointable):
    """What array task ``shard`` runs: the requested stages on its videos, in this process.

    Picklable (submitit sends it to the node). Requeued after a pre-emption or a time-out
    (:meth:`checkpoint`, submitit's), it resumes after the videos it finished. It works inside its
    run's claim of ``work_dir`` (:func:`referdino_plus.workdir_lock.check_run_holds`): it does
    not start when the lock file names another run. Signals are submitit's: SIGUSR2 checkpoints
    and requeues the task (the write in progress is dropped: ``SystemExit`` unwinds it), SIGTERM
    is ignored (a pre-empting SLURM sends it first).
    """

    cfg: PipelineConfig
    stages: list[int]
    shard: int
    video_ids: list[str]
    overwrite: bool
    environment: dict[str, str]  # the submitting process's code_environment()
    run_id: str  # the run's id in work_dir's lock (referdino_plus.workdir_lock)
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
        if self.cfg.run.lock:
            check_run_holds(self.cfg.work_dir, self.run_id)
        import torch

        options = self.cfg.launcher.slurm
        torch.set_num_threads(options.cpus_per_task)
        job_id = submitit.JobEnvironment().job_id
        progress = progress_path(options.log_dir, job_id)
        device = "cuda:0" if options.gpus_per_task else "cpu"
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
        for number in sorted(self.stages):
            todo = self._todo(number, fingerprints)
            if not todo:
                summaries[number] = RunSummary()
                continue
            stage = get_stage(number)
            record_event(progress, number, "stage")
            summary = run_sharded(
                stage.worker,
                stage.job(self.cfg, fingerprints),
                todo,
                stage.devices([device]),
                desc=f"{stage.name} shard {self.shard}",
                on_event=partial(self._on_event, progress, number),
            )
            summaries[number] = summary
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
