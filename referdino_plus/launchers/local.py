"""``launcher=local``: the stages on this machine, one after another, each through
:func:`rvos.workers.run_sharded` (one worker process per device of ``--gids``; in this process
with one device)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from referdino_plus.config import PipelineConfig
from referdino_plus.launchers import Launcher, LaunchRecord, RunPlan
from referdino_plus.pipeline import PipelineError, check_inputs
from referdino_plus.stages import get_stage
from rvos.workers import RunSummary, run_sharded

logger = logging.getLogger(__name__)


class LocalLauncher(Launcher):
    """This machine's devices (``--gids``, ``--cpu``; none chosen: the CPU)."""

    def __init__(self, cfg: PipelineConfig, devices: Sequence[str]) -> None:
        super().__init__(cfg, list(devices) or ["cpu"])

    def describe(self) -> str:
        return ", ".join(self.devices)

    def launch(self, plan: RunPlan, result: LaunchRecord) -> None:
        """Each stage of the plan on its videos ``plan.todo``; stops at the first stage with a
        failure (logged).

        Raises:
            PipelineError: a stage's inputs are missing, or a write failed (one line: the file,
                the error and what to do); the workers stopped at once.
        """
        video_ids = plan.split.video_ids
        for number in plan.stages:
            stage = get_stage(number)
            check_inputs(plan.cfg, plan.fingerprints, number, video_ids)
            videos = list(plan.todo[number])
            logger.info(
                "%s: %d video(s) to process, %d already finished",
                stage.name,
                len(videos),
                len(video_ids) - len(videos),
            )
            if not videos:
                result.stage_summaries[number] = RunSummary()
                continue
            summary = run_sharded(
                stage.worker,
                stage.job(plan.cfg, plan.fingerprints),
                videos,
                stage.devices(self.devices),
                desc=stage.name,
            )
            result.stage_summaries[number] = summary
            if summary.write_fault is not None:
                raise PipelineError(f"{stage.name} stopped: {summary.write_fault.error}")
            if not summary.ok:
                logger.error("%s", failure_summary(stage.name, summary, len(videos)))
                return


def failure_summary(stage_name: str, summary: RunSummary, num_videos: int) -> str:
    """One line saying what failed in a stage and what to do."""
    setups = [f for f in summary.failures if f.video_id is None]
    videos = sorted({f.video_id for f in summary.failures if f.video_id is not None})
    parts = []
    if setups:
        devices = ", ".join(sorted({f.device for f in setups}))
        parts.append(f"could not start on {devices} ({setups[0].error})")
    if videos:
        named = ", ".join(videos[:5]) + (" ..." if len(videos) > 5 else "")
        parts.append(f"{len(videos)} of {num_videos} video(s) failed ({named})")
    return (
        f"{stage_name}: {'; '.join(parts)}. Finished videos are kept; fix the cause and rerun "
        "the same command to process only the missing ones"
    )
