"""Frames as files: checking that they decode, and reading them one at a time.

:func:`check_frames` checks a split's frames before any model loads. Every listed frame is decoded
in full (a truncated JPEG has a valid header; only decoding finds it), by a pool of threads (the
decoders release the GIL). Frames that decoded once are recorded in a small JSON cache by path,
size and modification time, so that a rerun checks only what changed.

:class:`FrameFiles` is a clip whose frames are decoded when indexed, so that a long clip is never
held decoded whole.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import overload

from PIL import Image, UnidentifiedImageError

from rvos.io import atomic_output
from rvos.progress import progress_bar

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_NAMED = 5  # problems named per video, the rest counted


class FrameError(OSError):
    """A frame file that cannot be read; the message is one line naming it."""


class FrameFiles(Sequence[Image.Image]):
    """Frames kept as image files, each decoded as an RGB image when indexed (nothing cached).

    What stage 1 (a window at a time) and the trackers (a frame at a time) read: the pixels are
    those of ``Image.open(path).convert("RGB")``, the same as frames decoded up front.

    Args:
        paths: the frames' files, in order.
    """

    def __init__(self, paths: Iterable[os.PathLike | str]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> FrameFiles: ...

    def __getitem__(self, index: int | slice) -> Image.Image | FrameFiles:
        if isinstance(index, slice):
            return FrameFiles(self.paths[index])
        return read_rgb(self.paths[index])


def read_rgb(path: Path) -> Image.Image:
    """The image file ``path`` decoded as RGB.

    Raises:
        FrameError: a missing or unreadable file (the message names it).
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise FrameError(f"frame {path} is unreadable ({err})") from None


def decoded_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((H, W), None)`` if ``path`` decodes in full, else ``(None, reason)``."""
    try:
        with Image.open(path) as image:
            image.load()
            return (image.height, image.width), None
    except FileNotFoundError:
        return None, "missing"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return None, f"unreadable ({err})"  # a bomb: more pixels than Pillow decodes


def _stamp(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file, ``None`` if it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_cache(path: Path | None) -> dict[str, list[int]]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    frames = data.get("frames")
    return frames if isinstance(frames, dict) else {}


def check_frames(
    videos: Mapping[str, Sequence[Path]],
    *,
    cache: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Decode every frame of every video; return what is wrong, one line per video.

    Args:
        videos: ``video_id -> frame paths`` in order.
        cache: a JSON file remembering frames that decoded (by path, size and mtime; read and
            updated); ``None``: decode everything.
        threads: decoding threads (``None``: one per core, at least 4).
        progress: show a progress bar over the frames to decode.
    Returns:
        one message per video whose frame folder is missing, or with missing, unreadable or
        odd-sized frames (empty: all good).
    """
    known = _read_cache(cache)
    todo: list[Path] = []
    stamps: dict[Path, list[int] | None] = {}
    sizes: dict[Path, tuple[int, int] | None] = {}
    errors: dict[Path, str] = {}
    folders_missing = {
        video_id: paths[0].parent
        for video_id, paths in videos.items()
        if paths and not paths[0].parent.is_dir()
    }
    for video_id, paths in videos.items():
        if video_id in folders_missing:
            continue
        for path in paths:
            stamps[path] = stamp = _stamp(path)
            entry = known.get(str(path))
            if stamp is None:
                errors[path] = "missing"
            elif entry is not None and entry[:2] == stamp:
                sizes[path] = (entry[2], entry[3])
            else:
                todo.append(path)
    workers = threads or max(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            results = pool.map(decoded_size, todo)
            bar = progress_bar(
                results, total=len(todo), desc="checking frames", unit="frame", disable=not progress
            )
            for path, (size, error) in zip(todo, bar, strict=True):
                if error is None:
                    sizes[path] = size
                else:
                    errors[path] = error
        except BaseException:
            pool.shutdown(cancel_futures=True)  # stopped: the frames not started are not decoded
            raise
    problems = [
        problem
        for video_id, paths in videos.items()
        if (problem := _video_problem(video_id, paths, sizes, errors, folders_missing))
    ]
    if cache is not None:
        _write_cache(cache, known, ((p, stamps[p], sizes[p]) for p in sizes))
    return problems


def _video_problem(
    video_id: str,
    paths: Sequence[Path],
    sizes: Mapping[Path, tuple[int, int] | None],
    errors: Mapping[Path, str],
    folders_missing: Mapping[str, Path],
) -> str | None:
    """One line naming the video's missing frame folder or bad frames, or ``None``."""
    if video_id in folders_missing:
        return (
            f"video {video_id!r}: frame folder {folders_missing[video_id]} not found "
            f"({len(paths)} frame(s) listed)"
        )
    bad = [f"{p.name} {errors[p]}" for p in paths if p in errors]
    if bad:
        more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
        folder = paths[0].parent
        return f"video {video_id!r} ({folder}): frame {'; '.join(bad[:_NAMED])}{more}"
    distinct = sorted({sizes[p] for p in paths})
    if len(distinct) > 1:
        return f"video {video_id!r}: frames have different sizes (H, W) {distinct}"
    return None


def _write_cache(
    path: Path,
    known: dict[str, list[int]],
    decoded: Iterable[tuple[Path, list[int] | None, tuple[int, int] | None]],
) -> None:
    """Record the frames that decoded (best effort: a cache that cannot be written is skipped)."""
    frames = dict(known)
    for frame, stamp, size in decoded:
        if stamp is not None and size is not None:
            frames[str(frame)] = [*stamp, *size]
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "frames": frames}))
    except OSError as err:
        logger.debug("frame check cache %s not written: %s", path, err)
