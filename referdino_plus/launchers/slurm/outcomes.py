"""How the tasks of an array ended, and the run's outcome made of them: failures named by
shard, job, video and log file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from referdino_plus.config import PipelineConfig
from referdino_plus.launchers import LaunchRecord
from referdino_plus.launchers.slurm.journal import TaskPosition, describe_position
from referdino_plus.pipeline import PipelineError, RunResult, pending_videos
from referdino_plus.stages import Fingerprints, get_stage
from rvos.splits import Split
from rvos.workers import Failure, RunSummary

logger = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """How one task ended."""

    shard: int
    job_id: str
    log_file: Path
    summaries: dict[int, RunSummary]  # what the task returned (empty when it did not)
    error: str | None = None  # why it did not return: its exception, or how SLURM ended it
    position: TaskPosition | None = None  # where it was then


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
                get_stage(stage).name,
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
                f"{get_stage(stage).name}: {len(missing)} video(s) have no finished record after "
                f"the tasks ({', '.join(missing[:5])}); rerun the same command"
            )


def conclude(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split,
    outcomes: Sequence[TaskOutcome],
    stages: Sequence[int],
    result: LaunchRecord,
) -> None:
    """The tasks' outcomes into ``result``: each stage's summary, and why the run failed
    (logged) when some task did.

    Raises:
        PipelineError: every task succeeded, yet some record is missing (:func:`check_complete`).
    """
    result.stage_summaries = merge_outcomes(outcomes, stages).stage_summaries
    if result.ok:
        check_complete(cfg, fingerprints, split, stages)
        return
    failed = sum(not task_ok(outcome) for outcome in outcomes)
    result.failure = f"{failed} of {len(outcomes)} task(s) failed"
    logger.error(
        "%s (see above). Finished videos are kept; rerun the same command to submit only the "
        "missing ones.",
        result.failure,
    )
