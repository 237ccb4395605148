"""MeViS submission archives.

Layout (the one the MeViS evaluation server expects): ``<video_id>/<exp_id>/<frame_name>.png`` at
the top level of the zip, no wrapper folder; each PNG is mode ``L`` with values 0/255 at the
original frame size, one per frame listed in ``meta_expressions.json``.

PNGs are encoded in parallel per video (joblib) and streamed into a temporary zip that replaces
the final name only once every video and expression of the split is in it, so a partial archive
is never presented as complete. Entries carry a fixed timestamp, so the same masks always give
the same bytes (archives from different runs, machines or clusters compare with ``cmp``).
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from PIL import Image
from tqdm import tqdm

from rvos.io import atomic_output, safe_component

logger = logging.getLogger(__name__)

# (video_id) -> (frame_names, {exp_id: [T, H, W] bool})
VideoMasksLoader = Callable[[str], tuple[Sequence[str], dict[str, np.ndarray]]]
# Timestamp of every entry (the earliest the zip format stores), instead of the time of writing.
ENTRY_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Unix permissions of every entry (rw-------, as zipfile gives entries written from bytes).
ENTRY_MODE = 0o600


class IncompleteArchiveError(RuntimeError):
    """The masks of some videos/expressions/frames needed by the archive are missing."""


def encode_png(mask: np.ndarray, compress_level: int = 1) -> bytes:
    """``mask: [H, W] bool`` -> PNG bytes, mode L, 0/255."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def encode_video_entries(
    load: VideoMasksLoader,
    video_id: str,
    expected: dict[str, Sequence[str]],
    compress_level: int,
) -> list[tuple[str, bytes]]:
    """All ``(arcname, png)`` entries of one video.

    Args:
        load: returns the video's frame names and ``{exp_id: [T, H, W] bool}``.
        expected: ``{exp_id: frame_names}`` the archive must contain for this video.
    Raises:
        IncompleteArchiveError: an expected expression is missing or has another frame count.
    """
    frame_names, masks = load(video_id)
    frame_names = list(frame_names)
    entries = []
    for exp_id, wanted_frames in expected.items():
        if exp_id not in masks:
            raise IncompleteArchiveError(f"video {video_id!r}: expression {exp_id!r} is missing")
        stack = masks[exp_id]
        if list(wanted_frames) != frame_names or stack.shape[0] != len(frame_names):
            raise IncompleteArchiveError(
                f"video {video_id!r}, expression {exp_id!r}: {stack.shape[0]} masks for "
                f"{len(wanted_frames)} listed frames"
            )
        folder = f"{safe_component(video_id, 'video id')}/{safe_component(exp_id, 'exp id')}"
        for frame_name, mask in zip(frame_names, stack, strict=True):
            name = f"{folder}/{safe_component(frame_name, 'frame name')}.png"
            entries.append((name, encode_png(mask, compress_level)))
    return entries


def archive_entry(name: str) -> zipfile.ZipInfo:
    """The zip entry of ``name``: stored (PNGs are compressed already), fixed time and mode."""
    entry = zipfile.ZipInfo(name, date_time=ENTRY_DATE_TIME)
    entry.compress_type = zipfile.ZIP_STORED
    entry.external_attr = ENTRY_MODE << 16
    return entry


def write_archive(
    path: Path,
    load: VideoMasksLoader,
    expected: dict[str, dict[str, Sequence[str]]],
    *,
    compress_level: int = 1,
    jobs: int = -1,
    desc: str | None = None,
) -> int:
    """Write a MeViS archive atomically.

    Args:
        path: the ``.zip`` to write.
        load: per video, its frame names and ``{exp_id: [T, H, W] bool}`` (called in workers,
            so it must be picklable: a module-level function or a ``functools.partial``).
        expected: ``{video_id: {exp_id: frame_names}}`` — what a complete archive holds
            (usually every video and expression of ``meta_expressions.json``).
        compress_level: PNG zlib level.
        jobs: joblib processes encoding PNGs.
    Returns:
        the number of PNG entries written.
    """
    video_ids = sorted(expected)
    results: Iterator[list[tuple[str, bytes]]] = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(encode_video_entries)(load, vid, expected[vid], compress_level) for vid in video_ids
    )
    count = 0
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for entries in tqdm(results, total=len(video_ids), desc=desc or path.name, leave=False):
            for name, data in entries:
                archive.writestr(archive_entry(name), data)
            count += len(entries)
    logger.info("wrote %s (%d masks)", path, count)
    return count
