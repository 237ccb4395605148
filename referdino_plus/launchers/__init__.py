"""Where a run's stages execute: one interface, :class:`Launcher`, and its implementations, found
by the ``launcher`` setting's name in :data:`LAUNCHERS`.

:func:`referdino_plus.pipeline.run` checks everything and sets the run up once (the split, the
preflight, the resolved configuration, archives of another configuration), hands the stages to
the chosen launcher as a :class:`RunPlan`, and finishes the run with what the launcher records
in its result (:class:`LaunchRecord`): archives, scores, report.

- ``local`` (:mod:`referdino_plus.launchers.local`): this machine, one worker per ``--gids``
  device, in this process with one device;
- ``slurm`` (:mod:`referdino_plus.launchers.slurm`): a SLURM job array through submitit.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from referdino_plus.stages import Fingerprints
from rvos.splits import Split
from rvos.workers import RunSummary

if TYPE_CHECKING:
    from referdino_plus.config import PipelineConfig
    from referdino_plus.workdir_lock import WorkDirLock

# launcher.name -> "module:class" of its Launcher.
LAUNCHERS = {
    "local": "referdino_plus.launchers.local:LocalLauncher",
    "slurm": "referdino_plus.launchers.slurm:SlurmLauncher",
}


@dataclass(frozen=True)
class RunPlan:
    """A run that is checked and set up, ready for its stages.

    Attributes:
        cfg: the run's configuration.
        fingerprints: each stage's configuration fingerprint.
        split: the split the run processes.
        stages: the stages to run, in order.
        todo: per stage, the videos it has to process (found once, before the run).
        overwrite: recompute finished videos (``--overwrite``).
        evaluate: score the archives (the split's ground truth is complete).
        lock: the run's lock of ``work_dir``, held (:mod:`referdino_plus.workdir_lock`): its id
            goes with work done elsewhere, which it records (SLURM jobs).
    """

    cfg: PipelineConfig
    fingerprints: Fingerprints
    split: Split
    stages: list[int]
    todo: dict[int, list[str]]
    overwrite: bool
    evaluate: bool
    lock: WorkDirLock


class Handoff(Protocol):
    """A run that goes on elsewhere (e.g. a job that finishes it once its tasks have ended)."""

    def describe(self) -> str:
        """What was handed off, and how to finish the run by hand (lines for people)."""
        ...


class LaunchRecord(Protocol):
    """What a launcher records of a run (:class:`referdino_plus.pipeline.RunResult` has it)."""

    stage_summaries: dict[int, RunSummary]  # per stage run, the videos done and failed
    failure: str  # why the run failed, one line for its report ("": the summaries say)
    handoff: Handoff | None  # the run goes on elsewhere, which writes its outputs and report


class Launcher(ABC):
    """Runs a plan's stages somewhere."""

    def __init__(self, cfg: PipelineConfig, devices: Sequence[str]) -> None:
        """``devices``: this machine's devices chosen for the run (``--gids``, ``--cpu``;
        empty: none chosen)."""
        self.cfg = cfg
        self.devices = list(devices)

    def check_settings(self, stages: Sequence[int]) -> None:
        """Check what the launcher is given before anything is read.

        Raises:
            ValueError: one line naming the setting it cannot use.
        """
        return None  # nothing to check, unless a launcher says otherwise

    def check(self, stages: Sequence[int]) -> None:
        """:meth:`check_settings`, and that the launcher can start (its tools are there).

        Raises:
            ValueError: a setting; ``PipelineError``: what is missing.
        """
        self.check_settings(stages)

    @abstractmethod
    def describe(self) -> str:
        """Where the stages run, for the log (``cuda:0, cuda:1``, ``SLURM (8 tasks)``)."""

    @abstractmethod
    def launch(self, plan: RunPlan, result: LaunchRecord) -> None:
        """Run the plan's stages on their videos ``plan.todo``, recording in ``result`` each
        stage's summary once it is known (kept if the run stops), ``result.failure`` when some
        failed, or ``result.handoff`` when the run goes on elsewhere.

        Raises:
            PipelineError: the run cannot go on (a stage's inputs are missing, a write failed,
                the job was refused).
        """


def build_launcher(cfg: PipelineConfig, devices: Sequence[str] = ()) -> Launcher:
    """The launcher ``cfg.launcher.name`` names (:data:`LAUNCHERS`), given ``devices``."""
    module_name, _, class_name = LAUNCHERS[str(cfg.launcher.name)].partition(":")
    launcher_class = getattr(importlib.import_module(module_name), class_name)
    return launcher_class(cfg, devices)


def choose_launcher(
    cfg: PipelineConfig, gids: Sequence[int] | None, cpu: bool, stages: Sequence[int]
) -> Launcher:
    """The run's launcher (``launcher=...``), its settings checked before anything is written:
    ``local`` on this machine's devices (``--gids``, ``--cpu``; neither: GPU 0, or the CPU),
    another one on devices of its own; ``stages``: the stages it will run.

    Raises:
        ValueError: ``--gids``/``--cpu`` with another launcher than ``local``, or a setting the
            launcher cannot use (e.g. a path a cluster's nodes could not reach: relative).
    """
    from referdino_plus.config import LauncherKind
    from referdino_plus.runtime import gpu_count, select_devices

    if cfg.launcher.name == LauncherKind.local:
        devices = select_devices(gids, cpu, available=0 if cpu else gpu_count())
    elif gids or cpu:
        raise ValueError(
            f"--gids and --cpu choose this machine's devices; with launcher={cfg.launcher.name}, "
            "launcher.slurm.gpus_per_task sets each task's"
        )
    else:
        devices = []
    launcher = build_launcher(cfg, devices)
    launcher.check_settings(stages)
    return launcher
