"""Submission archives, one member layout per benchmark (``data.archive``, :data:`ARCHIVE_WRITERS`).

``mevis``            ``<video_id>/<exp_id>/<frame_name>.png`` at the top level of the zip, no
                     wrapper folder (the layout the MeViS evaluation server expects, v1 and v2)
``ref_youtube_vos``  ``Annotations/<video_id>/<exp_id>/<frame_name>.png`` (the Ref-YouTube-VOS
                     server wants the ``Annotations/`` prefix, as ReferDINO's ``inference_ytvos.py``
                     zips it)
``ref_davis17``      ``anno_<k>/<video_id>/<frame_name>.png``: per annotator ``k``, one indexed PNG
                     (mode ``P``, DAVIS palette) per frame, pixel ``i`` = the object of the
                     annotator's ``i``-th expression (:class:`AnnotatorLabelPngs`)

The first two hold one PNG per expression and frame, mode ``L`` with values 0/255 at the original
frame size; every archive has one PNG per frame listed in the split's metadata.

Masks come per video as runs (:class:`~rvos.masks.RunLengthMasks`) or bool arrays; runs are
decoded one frame at a time, as each PNG is encoded, so no video is held at frame size whatever
its length.

PNGs are encoded in parallel per video (joblib) and streamed into a temporary zip that replaces
the final name only once every video and expression of the split is in it, so a partial archive
is never presented as complete. Entries carry a fixed timestamp, so the same masks always give
the same bytes (archives from different runs, machines or clusters compare with ``cmp``).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from joblib import Parallel, delayed
from PIL import Image

from rvos.davis import annotator_dir, encode_label_png
from rvos.io import atomic_output, safe_component
from rvos.masks import MaskStack, iter_frames
from rvos.options import process_count
from rvos.progress import progress_bar
from rvos.registry import Registry
from rvos.splits import Video

logger = logging.getLogger(__name__)

# (video_id) -> (frame_names, {exp_id: [T, H, W] masks, runs or bool})
VideoMasksLoader = Callable[[str], tuple[Sequence[str], dict[str, MaskStack]]]
# Timestamp of every entry (the earliest the zip format stores), instead of the time of writing.
ENTRY_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Unix permissions of every entry (rw-------, as zipfile gives entries written from bytes).
ENTRY_MODE = 0o600


class IncompleteArchiveError(RuntimeError):
    """The masks of some videos/expressions/frames needed by the archive are missing."""


def encode_png(mask: np.ndarray, compress_level: int = 1) -> bytes:
    """``mask: [H, W] bool`` -> PNG bytes, mode L, 0/255."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0)), mode="L")
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


# The members of one video: [(arcname, PNG bytes)].
Entries = list[tuple[str, bytes]]


@dataclass(frozen=True)
class ExpressionPngs:
    """One mode-``L`` PNG (0/255) per expression and frame: ``<prefix><video>/<exp_id>/<frame>.png``.

    Attributes:
        prefix: ``""`` (MeViS) or a folder every member sits in (``"Annotations/"``).
    """

    prefix: str

    def video_entries(
        self,
        video_id: str,
        frame_names: Sequence[str],
        masks: Mapping[str, MaskStack],
        compress_level: int,
    ) -> Entries:
        """Members of one video; ``masks``: ``{exp_id: [T, H, W]}`` in archive order."""
        entries = []
        for exp_id, stack in masks.items():
            folder = f"{safe_component(video_id, 'video id')}/{safe_component(exp_id, 'exp id')}"
            for frame_name, mask in zip(frame_names, iter_frames(stack), strict=True):
                name = f"{self.prefix}{folder}/{safe_component(frame_name, 'frame name')}.png"
                entries.append((name, encode_png(mask, compress_level)))
        return entries


@dataclass(frozen=True)
class AnnotatorLabelPngs:
    """Per annotator, one indexed PNG per frame: ``anno_<k>/<video>/<frame>.png`` (Ref-DAVIS17).

    An annotator's expressions are merged as ReferDINO's Ref-DAVIS17 inference merges soft masks
    (background 0.1, masks below 0.5 zeroed, argmax) with each mask's value 1 inside: pixel ``i``
    is the ``i``-th object whose mask covers it, the first in ``obj_idx`` order where masks
    overlap, 0 where none does. (Stage-1 answers made with ``top1_per_annotator`` are already
    disjoint, resolved by their soft masks.)

    Attributes:
        groups: ``{video_id: {annotator: [exp_id, ...]}}``, each list in ``obj_idx`` order.
    """

    groups: Mapping[str, Mapping[int, Sequence[str]]]

    @classmethod
    def for_videos(cls, videos: Mapping[str, Video]) -> AnnotatorLabelPngs:
        """The writer of a split whose expressions carry ``annotator`` and ``obj_idx``.

        Raises:
            ValueError: a video whose expressions have no annotators.
        """
        groups = {vid: video.annotator_groups() for vid, video in videos.items()}
        lacking = [vid for vid, g in groups.items() if not g]
        if lacking:
            raise ValueError(
                f"data.archive=ref_davis17 needs expressions grouped by annotator "
                f"(data.layout=ref_davis17); video {lacking[0]!r} has none"
            )
        return cls(groups=groups)

    def video_entries(
        self,
        video_id: str,
        frame_names: Sequence[str],
        masks: Mapping[str, MaskStack],
        compress_level: int,
    ) -> Entries:
        """Members of one video: ``len(frame_names)`` PNGs per annotator (``masks``:
        ``{exp_id: [T, H, W]}``), merged frame by frame."""
        entries = []
        video = safe_component(video_id, "video id")
        for annotator, exp_ids in self.groups[video_id].items():
            objects = zip(*(iter_frames(masks[e]) for e in exp_ids), strict=True)
            for frame_name, frame_masks in zip(frame_names, objects, strict=True):
                name = (
                    f"{annotator_dir(annotator)}/{video}/{safe_component(frame_name, 'frame')}.png"
                )
                labels = merge_labels(frame_masks)
                entries.append((name, encode_label_png(labels, compress_level)))
        return entries


def merge_labels(masks: Sequence[np.ndarray]) -> np.ndarray:
    """``uint8`` labels of object masks: ``i + 1`` where ``masks[i]`` is the first to cover a
    pixel, 0 where none does.

    Args:
        masks: per object, bool masks of one shape (``[H, W]``: a frame; ``[T, H, W]``: a video).
    """
    labels = np.zeros(masks[0].shape, dtype=np.uint8)
    for obj_idx in reversed(range(len(masks))):
        labels[masks[obj_idx]] = obj_idx + 1
    return labels


class ArchiveWriter(Protocol):
    """Turns one video's masks into archive members."""

    def video_entries(
        self,
        video_id: str,
        frame_names: Sequence[str],
        masks: Mapping[str, MaskStack],
        compress_level: int,
    ) -> Entries: ...


MEVIS_WRITER = ExpressionPngs(prefix="")
# data.archive -> (the split's videos -> writer). Add an entry for another benchmark's members.
ARCHIVE_WRITERS: Registry[Callable[[Mapping[str, Video]], ArchiveWriter]] = Registry(
    "archive writer",
    {
        "mevis": lambda videos: MEVIS_WRITER,
        "ref_youtube_vos": lambda videos: ExpressionPngs(prefix="Annotations/"),
        "ref_davis17": AnnotatorLabelPngs.for_videos,
    },
)


def build_archive_writer(name: str, videos: Mapping[str, Video]) -> ArchiveWriter:
    """The writer registered as ``name``, for a split's ``videos``.

    Raises:
        ValueError: an unknown name (listing the known ones), or a split it cannot write.
    """
    return ARCHIVE_WRITERS.lookup(name)(videos)


def encode_video_entries(
    load: VideoMasksLoader,
    video_id: str,
    expected: dict[str, Sequence[str]],
    compress_level: int,
    writer: ArchiveWriter = MEVIS_WRITER,
) -> Entries:
    """All ``(arcname, png)`` entries of one video.

    Args:
        load: returns the video's frame names and ``{exp_id: [T, H, W]}`` (runs or bool).
        expected: ``{exp_id: frame_names}`` the archive must contain for this video.
        writer: the member layout.
    Raises:
        IncompleteArchiveError: an expected expression is missing or has another frame count.
    """
    frame_names, masks = load(video_id)
    frame_names = list(frame_names)
    for exp_id, wanted_frames in expected.items():
        if exp_id not in masks:
            raise IncompleteArchiveError(f"video {video_id!r}: expression {exp_id!r} is missing")
        stack = masks[exp_id]
        if list(wanted_frames) != frame_names or stack.shape[0] != len(frame_names):
            raise IncompleteArchiveError(
                f"video {video_id!r}, expression {exp_id!r}: {stack.shape[0]} masks for "
                f"{len(wanted_frames)} listed frames"
            )
    ordered = {exp_id: masks[exp_id] for exp_id in expected}
    return writer.video_entries(video_id, frame_names, ordered, compress_level)


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
    writer: ArchiveWriter = MEVIS_WRITER,
    stamp: Mapping[str, Any] | None = None,
) -> int:
    """Write an archive atomically (MeViS layout unless ``writer`` says otherwise).

    Args:
        path: the ``.zip`` to write.
        load: per video, its frame names and ``{exp_id: [T, H, W]}`` as runs (decoded a frame
            at a time) or bool; called in workers, so it must be picklable (a module-level
            function or a ``functools.partial``).
        expected: ``{video_id: {exp_id: frame_names}}`` — what a complete archive holds
            (usually every video and expression of ``meta_expressions.json``).
        compress_level: PNG zlib level.
        jobs: joblib processes encoding PNGs.
        writer: the member layout (:func:`build_archive_writer`); picklable.
        stamp: JSON-ready facts to keep in the zip's comment (e.g. the fingerprint of the
            configuration that made the masks; :func:`read_stamp`).
    Returns:
        the number of PNG entries written.
    """
    video_ids = sorted(expected)
    count = 0
    # The file first: a folder that cannot be written fails before any PNG is encoded.
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        processes = process_count(jobs, len(video_ids))
        results: Iterator[Entries] = Parallel(n_jobs=processes, return_as="generator")(
            delayed(encode_video_entries)(load, vid, expected[vid], compress_level, writer)
            for vid in video_ids
        )
        for entries in progress_bar(
            results, total=len(video_ids), desc=desc or path.name, unit="video", leave=False
        ):
            for name, data in entries:
                archive.writestr(archive_entry(name), data)
            count += len(entries)
        if stamp is not None:
            archive.comment = json.dumps(dict(stamp), sort_keys=True).encode()
    logger.info("wrote %s (%d masks)", path, count)
    return count


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp :func:`write_archive` kept in the zip's comment; ``None`` if there is none or the
    file is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            stamp = json.loads(archive.comment.decode() or "null")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None
