"""The pipeline's stages, each described once: everything the application needs to run a stage,
find its records, write its archive and name it reads :data:`STAGES`.

Light to import (the data layer only): the archive writer's worker processes read this table
(:func:`referdino_plus.archives.archive_masks`) and must not load the models' code. A stage's
own code is imported when its job is built (:meth:`Stage.job`), that is, when it is going to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvos import intermediates as im
from rvos.masks import RunLengthMasks

if TYPE_CHECKING:
    from referdino_plus.config import PipelineConfig
    from rvos.proposals import Stage1Records

# Each stage's configuration fingerprint, by stage number (referdino_plus.pipeline).
Fingerprints = Mapping[int, str]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        number: ``--stages``, the records' folder ``work_dir/stage<number>/``, and the place in
            the fingerprint chain (each stage's fingerprint includes the one before).
        name: how logs, progress bars and messages name it (``stage 1 (ReferDINO)``).
        label: its row in a run's pictures (``visualize``).
        worker: ``"module:function"`` building a worker's per-video processor from its job and
            a device (:mod:`rvos.workers`).
        build_job: ``(cfg, fingerprints) -> job``: the plain, picklable job its workers receive.
        reads: the stage whose records it reads (``None``: it reads the split).
        uses_device: its workers run on the run's devices; ``False``: on the CPU.
        record_kind: the format name in its records' headers (:mod:`rvos.intermediates`).
        load_record: ``path -> record``: reads one of its records.
        archive: the submission archive made of its records (in ``submission_dir``).
        archive_masks: ``record -> {exp_id: [T, H, W] masks}``: what its archive holds.
    """

    number: int
    name: str
    label: str
    worker: str
    build_job: Callable[[PipelineConfig, Fingerprints], Any]
    reads: int | None
    uses_device: bool
    record_kind: str
    load_record: Callable[[Path], Any]
    archive: str
    archive_masks: Callable[[Any], dict[str, RunLengthMasks]]

    def job(self, cfg: PipelineConfig, fingerprints: Fingerprints) -> Any:
        """The job of this stage's workers for the run of ``cfg``."""
        return self.build_job(cfg, fingerprints)

    def devices(self, devices: Sequence[str]) -> list[str]:
        """Where its workers run: ``devices``, or the CPU for a stage that uses none."""
        return list(devices) if self.uses_device else ["cpu"]

    def record_path(self, work_dir: Path, video_id: str) -> Path:
        """``work_dir/stage<number>/<video_id>.npz``."""
        return im.stage_path(work_dir, self.number, video_id)

    def is_finished(self, work_dir: Path, video_id: str, fingerprint: str) -> bool:
        """Whether the video's record is complete and made with ``fingerprint``."""
        return im.is_finished(self.record_path(work_dir, video_id), self.record_kind, fingerprint)


def stage1_records(cfg: PipelineConfig, fingerprints: Fingerprints) -> Stage1Records:
    """Where the run's stage-1 records are (and, with ``stage1.legacy_dir``, come from)."""
    from rvos.proposals import Stage1Records

    legacy_dir = cfg.stage1.legacy_dir
    return Stage1Records(
        work_dir=Path(cfg.work_dir),
        fingerprint=fingerprints[1],
        legacy_dir=Path(legacy_dir) if legacy_dir else None,
        obj_threshold=cfg.stage1.obj_threshold,
        answer=cfg.data.answer,
    )


def _stage1_job(cfg: PipelineConfig, fingerprints: Fingerprints) -> Any:
    from stage1_referdino.runner import Stage1Job

    records = stage1_records(cfg, fingerprints)
    return Stage1Job(Path(cfg.data.root), cfg.data.layout, records, cfg.stage1)


def _stage2_job(cfg: PipelineConfig, fingerprints: Fingerprints) -> Any:
    from stage2_sam2_refine.runner import Stage2Job

    work_dir, records = Path(cfg.work_dir), stage1_records(cfg, fingerprints)
    return Stage2Job(
        Path(cfg.data.root), cfg.data.layout, work_dir, fingerprints[2], records, cfg.stage2
    )


def _stage3_job(cfg: PipelineConfig, fingerprints: Fingerprints) -> Any:
    from stage3_fusion.runner import Stage3Job

    return Stage3Job(Path(cfg.work_dir), fingerprints[3], cfg.stage3)


STAGES: tuple[Stage, ...] = (
    Stage(
        number=1,
        name="stage 1 (ReferDINO)",
        label="stage 1",
        worker="stage1_referdino.runner:build_video_processor",
        build_job=_stage1_job,
        reads=None,
        uses_device=True,
        record_kind=im.STAGE1_KIND,
        load_record=im.load_stage1,
        archive="stage1.zip",
        # ReferDINO's own answer (the data.answer rule)
        archive_masks=lambda video: {e: p.answer for e, p in video.expressions.items()},
    ),
    Stage(
        number=2,
        name="stage 2 (SAM 2)",
        label="SAM 2",
        worker="stage2_sam2_refine.runner:build_video_processor",
        build_job=_stage2_job,
        reads=1,
        uses_device=True,
        record_kind=im.STAGE2_KIND,
        load_record=im.load_stage2,
        archive="stage2.zip",
        # the union of the SAM 2 objects (empty when no query was kept)
        archive_masks=lambda video: {e: r.sam2_union() for e, r in video.expressions.items()},
    ),
    Stage(
        number=3,
        name="stage 3 (fusion)",
        label="fused",
        worker="stage3_fusion.runner:build_video_processor",
        build_job=_stage3_job,
        reads=2,
        uses_device=False,  # the fusion runs on the masks' runs, on the CPU
        record_kind=im.STAGE3_KIND,
        load_record=im.load_stage3,
        archive="fused.zip",
        # the fused masks
        archive_masks=lambda video: {e: f.masks for e, f in video.expressions.items()},
    ),
)
STAGE_NUMBERS = tuple(stage.number for stage in STAGES)


def get_stage(number: int) -> Stage:
    """The stage numbered ``number``.

    Raises:
        ValueError: there is no such stage.
    """
    for stage in STAGES:
        if stage.number == number:
            return stage
    raise ValueError(f"no stage {number} (stages: {', '.join(map(str, STAGE_NUMBERS))})")


LAST_STAGE = STAGES[-1]  # its fingerprint chains all the others: the whole run's configuration
