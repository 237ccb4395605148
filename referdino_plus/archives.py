"""Which masks each submission archive holds, read from the stage records.

Kept apart from :mod:`referdino_plus.pipeline` and light to import: the archive writer's worker
processes load :func:`archive_masks` by module name, and should not import the models' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rvos import intermediates as im

# Archive name -> the stage whose records it is made of.
ARCHIVES = {"stage1.zip": 1, "stage2.zip": 2, "fused.zip": 3}


def archive_masks(
    work_dir: Path, stage: int, video_id: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Frame names and ``{exp_id: [T, H, W] bool}`` of one video for an archive.

    Stage 1: ReferDINO's own answer (the ``data.answer`` rule); stage 2: the union of the
    SAM 2 objects (empty when no query was kept); stage 3: the fused masks.
    """
    path = im.stage_path(work_dir, stage, video_id)
    if stage == 1:
        video = im.load_stage1(path)
        masks = {e: p.answer.decode() for e, p in video.expressions.items()}
    elif stage == 2:
        video = im.load_stage2(path)
        masks = {e: r.sam2_union() for e, r in video.expressions.items()}
    elif stage == 3:
        video = im.load_stage3(path)
        masks = {e: f.masks.decode() for e, f in video.expressions.items()}
    else:
        raise ValueError(f"no archive for stage {stage}")
    return video.frame_names, masks


def archive_is_current(path: Path, records: Sequence[Path]) -> bool:
    """Whether the archive ``path`` exists and is at least as new as every record it is made of."""
    if not path.is_file():
        return False
    newest = max((r.stat().st_mtime for r in records), default=0.0)
    return path.stat().st_mtime >= newest
