"""The submission archives: their masks read from the stage records (each stage's archive and
how its masks are read: :data:`referdino_plus.stages.STAGES`), their stamps, and archives of
another configuration set aside.

Kept apart from :mod:`referdino_plus.pipeline` and light to import: the archive writer's worker
processes load :func:`archive_masks` by module name, and should not import the models' code.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from referdino_plus.stages import STAGES, get_stage
from rvos.archive import read_stamp
from rvos.io import write_error
from rvos.masks import RunLengthMasks

logger = logging.getLogger(__name__)

# Where archives of another configuration are moved (in submission_dir), each set in a folder
# named by its configuration's fingerprint (the archives' stamp), "unknown" without one.
STALE_DIR = "stale"
UNKNOWN_FINGERPRINT = "unknown"
_FINGERPRINT = re.compile(r"[0-9A-Za-z_-]{1,64}")


def archive_masks(
    work_dir: Path, stage: int, video_id: str
) -> tuple[list[str], dict[str, RunLengthMasks]]:
    """Frame names and ``{exp_id: [T, H, W]}`` of one video for ``stage``'s archive, as runs
    (the archive writer decodes them a frame at a time): what :attr:`Stage.archive_masks
    <referdino_plus.stages.Stage.archive_masks>` reads from the video's record."""
    described = get_stage(stage)
    video = described.load_record(described.record_path(work_dir, video_id))
    return video.frame_names, described.archive_masks(video)


def archive_stamp(
    stage: int, fingerprint: str, run_fingerprint: str | None = None
) -> dict[str, Any]:
    """What an archive keeps in its comment: the stage whose records made it, their
    configuration's fingerprint, and that of the whole configuration of the run (the last
    stage's, which chains the others: the archives of one configuration share it)."""
    stamp: dict[str, Any] = {"stage": stage, "config_fingerprint": fingerprint}
    if run_fingerprint is not None:
        stamp["run_fingerprint"] = run_fingerprint
    return stamp


def archive_is_current(path: Path, records: Sequence[Path], fingerprint: str) -> bool:
    """Whether the archive ``path`` exists, was made with the configuration ``fingerprint`` and is
    at least as new as every record it is made of."""
    if not path.is_file():
        return False
    stamp = read_stamp(path) or {}
    if stamp.get("config_fingerprint") != fingerprint:
        return False
    newest = max((r.stat().st_mtime for r in records), default=0.0)
    return path.stat().st_mtime >= newest


def stale_target(submission_dir: Path, name: str, fingerprint: str | None) -> Path:
    """Where an archive of another configuration goes: ``stale/<its fingerprint>/<name>``
    (``stale/unknown/`` without one), under a new name if that one is taken (``-2``, ``-3``, ...):
    an archive set aside is never overwritten."""
    folder = submission_dir / STALE_DIR / (fingerprint or UNKNOWN_FINGERPRINT)
    target, number = folder / name, 1
    while target.exists():
        number += 1
        target = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
    return target


def set_aside_stale_archives(submission_dir: Path, fingerprints: Mapping[int, str]) -> list[Path]:
    """Move the archives made with another configuration (or of unknown origin) to
    ``submission_dir/stale/<their configuration's fingerprint>/`` (:func:`stale_target`; the
    ``run_fingerprint`` of their stamp), so that a failed run
    never leaves them looking like its own, and nothing finished is lost.

    Call it once the run is going to write (everything checked): a run that is refused leaves
    the archives where they are.

    Returns:
        where each archive was moved (each one is also logged as a warning).
    """
    moved = []
    for stage in STAGES:
        name = stage.archive
        path = submission_dir / name
        if not path.is_file():
            continue
        stamp = read_stamp(path) or {}
        if stamp.get("config_fingerprint") == fingerprints[stage.number]:
            continue
        # Kept with the other archives of its configuration (archives stamped before the runs'
        # fingerprints were: by their own).
        fingerprint = stamp.get("run_fingerprint", stamp.get("config_fingerprint"))
        if not (isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint)):
            fingerprint = None
        target = stale_target(submission_dir, name, fingerprint)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as err:
            raise write_error(target, err) from err
        logger.warning(
            "%s was made with another configuration: moved to %s (this run writes a new one "
            "when it completes)",
            path,
            target,
        )
        moved.append(target)
    return moved
