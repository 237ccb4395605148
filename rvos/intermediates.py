"""Per-video intermediate files exchanged by the stages.

One ``.npz`` per video and stage (``<work_dir>/stage{1,2,3}/<video_id>.npz``), written atomically,
loaded with ``allow_pickle=False``. Each file holds a JSON header (format name, version, video
metadata, the fingerprint of the configuration that produced it, per-expression scalars) and
plain numeric arrays; masks are :class:`~rvos.masks.RunLengthMasks` at frame size.

A file counts as finished for a rerun only if it parses, has the current version, was made by
the same stage configuration (fingerprint) and reads back whole (every member's CRC-32 checks
out); anything else is recomputed, a damaged file with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rvos.io import atomic_output
from rvos.masks import RunLengthMasks

logger = logging.getLogger(__name__)

# 2: stage-2 records name the stage-1 columns they kept ``kept_columns``.
FORMAT_VERSION = 2
_HEADER_KEY = "__header__"


# What reading a damaged .npz can raise (zlib: a compressed member overwritten inside).
_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    json.JSONDecodeError,
    zlib.error,
)


class IntermediateError(ValueError):
    """An intermediate file that is missing, corrupt, of another version or another stage."""


def stage_path(work_dir: Path, stage: int, video_id: str) -> Path:
    """``<work_dir>/stage<N>/<video_id>.npz``: where a stage keeps a video's record."""
    return Path(work_dir) / f"stage{stage}" / f"{video_id}.npz"


def config_fingerprint(config: Any) -> str:
    """A short stable hash of a JSON-serialisable configuration (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# -- generic record I/O ---------------------------------------------------------------------


def save_record(path: Path, kind: str, header: dict[str, Any], arrays: dict[str, np.ndarray]):
    """Write ``header`` (JSON) and ``arrays`` to ``path`` atomically."""
    full_header = {"format": kind, "version": FORMAT_VERSION, **header}
    payload = dict(arrays)
    payload[_HEADER_KEY] = np.frombuffer(json.dumps(full_header).encode(), dtype=np.uint8)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **payload)


def load_record(path: Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a record written by :func:`save_record`; raise :class:`IntermediateError` if unusable."""
    if not path.is_file():
        raise IntermediateError(f"{path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        header = json.loads(arrays.pop(_HEADER_KEY).tobytes().decode())
    except _READ_ERRORS as err:
        raise IntermediateError(
            f"{path}: corrupt intermediate ({err}); delete it or rerun to recompute it"
        ) from err
    if header.get("format") != kind:
        raise IntermediateError(f"{path}: holds {header.get('format')!r}, expected {kind!r}")
    if header.get("version") != FORMAT_VERSION:
        raise IntermediateError(
            f"{path}: format version {header.get('version')}, this code reads {FORMAT_VERSION}"
        )
    return header, arrays


def read_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a record, or ``None`` if the file is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(data[_HEADER_KEY].tobytes().decode())
    except _READ_ERRORS:
        return None


# Records this process has read back whole, by (path, size, mtime): a run asks several times.
_verified: set[tuple[str, int, int]] = set()


def damaged_member(path: Path) -> str | None:
    """The first member of the record whose bytes do not match their CRC-32 (or the reason the
    file cannot be read as a zip at all); ``None`` when it reads back whole."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except _READ_ERRORS as err:
        return f"({err})"
    if damaged is None:
        _verified.add(key)
    return damaged


def is_finished(path: Path, kind: str, fingerprint: str) -> bool:
    """Whether ``path`` is a complete record of ``kind`` made with configuration ``fingerprint``
    that reads back whole (a damaged one is reported, to be recomputed)."""
    if not path.is_file():
        return False
    header = read_header(path)
    if header is None:
        logger.warning("%s is unreadable: recomputing it", path)
        return False
    if header.get("format") != kind or header.get("version") != FORMAT_VERSION:
        return False
    if header.get("config_fingerprint") != fingerprint:
        logger.info("%s was made with another configuration: recomputing", path.name)
        return False
    damaged = damaged_member(path)
    if damaged is not None:
        logger.warning("%s is damaged (member %s): recomputing it", path, damaged)
        return False
    return True


def _put_masks(arrays: dict[str, np.ndarray], key: str, masks: RunLengthMasks) -> None:
    arrays[f"{key}.counts"] = masks.counts
    arrays[f"{key}.offsets"] = masks.offsets
    arrays[f"{key}.shape"] = np.asarray(masks.shape, dtype=np.int64)


def _get_masks(arrays: dict[str, np.ndarray], key: str) -> RunLengthMasks:
    try:
        return RunLengthMasks(
            shape=tuple(int(s) for s in arrays[f"{key}.shape"]),
            counts=arrays[f"{key}.counts"],
            offsets=arrays[f"{key}.offsets"],
        )
    except KeyError as err:
        raise IntermediateError(f"missing array {err}") from None


def _video_header(video: Any, fingerprint: str) -> dict[str, Any]:
    """Header fields shared by the per-video records of all stages."""
    return {
        "video_id": video.video_id,
        "frame_names": list(video.frame_names),
        "height": video.height,
        "width": video.width,
        "exp_ids": list(video.expressions),
        "config_fingerprint": fingerprint,
    }


def _video_fields(header: dict[str, Any]) -> dict[str, Any]:
    return {
        "video_id": header["video_id"],
        "frame_names": list(header["frame_names"]),
        "height": int(header["height"]),
        "width": int(header["width"]),
    }


def _is_masks_field(f: Field) -> bool:
    return f.type in ("RunLengthMasks", RunLengthMasks)


def _is_array_field(f: Field) -> bool:
    return f.type in ("np.ndarray", np.ndarray)


def _save_video(
    path: Path, kind: str, video: Any, fingerprint: str, *, scalars_key: str | None = None
) -> None:
    """Write a per-video record atomically.

    Each expression's array and mask fields become arrays named ``e<index>.<field>``; its other
    fields (scalars) go into the header under ``scalars_key``, keyed by expression id.
    """
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, (exp_id, exp) in enumerate(video.expressions.items()):
        for f in fields(exp):
            value, key = getattr(exp, f.name), f"e{index}.{f.name}"
            if _is_masks_field(f):
                _put_masks(arrays, key, value)
            elif _is_array_field(f):
                arrays[key] = np.asarray(value)
            else:
                scalars.setdefault(exp_id, {})[f.name] = value
    header = _video_header(video, fingerprint)
    if scalars_key is not None:
        header[scalars_key] = scalars
    save_record(path, kind, header, arrays)


def _load_video(
    path: Path, kind: str, video_cls: type, expression_cls: type, *, scalars_key: str | None = None
) -> Any:
    """Read a record written by :func:`_save_video` into ``video_cls`` of ``expression_cls``."""
    header, arrays = load_record(path, kind)
    try:
        expressions = {}
        for index, exp_id in enumerate(header["exp_ids"]):
            values = dict(header[scalars_key][exp_id]) if scalars_key else {}
            for f in fields(expression_cls):
                key = f"e{index}.{f.name}"
                if _is_masks_field(f):
                    values[f.name] = _get_masks(arrays, key)
                elif _is_array_field(f):
                    values[f.name] = arrays[key]
            expressions[exp_id] = expression_cls(**values)
        return video_cls(**_video_fields(header), expressions=expressions)
    except (KeyError, TypeError, IntermediateError, ValueError) as err:
        raise IntermediateError(f"{path}: incomplete {kind} intermediate ({err})") from None


# -- stage 1 --------------------------------------------------------------------------------

STAGE1_KIND = "referdino-plus/stage1"  # the format name in a stage-1 record's header


@dataclass
class ExpressionProposals:
    """Stage-1 output for one expression: the top-``K`` queries of ReferDINO.

    Attributes:
        scores: ``[T, K] float32`` sigmoid of the query logits per frame.
        boxes: ``[T, K, 4] float32`` normalised ``(cx, cy, w, h)``.
        masks: ``[T, K, H, W]`` binary masks at frame size (``upsample(logits) > 0``).
        query_ids: ``[K] int64`` the model's query id of each column (ascending; all ``N`` queries
            unless ``stage1.top_k``).
        answer: ``[T, H, W]`` the stage-1 answer, chosen over *all* queries by the benchmark's
            rule (``data.answer``, :mod:`rvos.proposals`); MeViS: the union of the queries whose
            mean score exceeds ``stage1.obj_threshold`` (top-1 if none), as ReferDINO's MeViS
            inference script computes it.
    """

    scores: np.ndarray
    boxes: np.ndarray
    masks: RunLengthMasks
    query_ids: np.ndarray
    answer: RunLengthMasks


@dataclass
class Stage1Video:
    """All stage-1 outputs of one video."""

    video_id: str
    frame_names: list[str]
    height: int
    width: int
    expressions: dict[str, ExpressionProposals] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)


def save_stage1(path: Path, video: Stage1Video, *, fingerprint: str) -> None:
    """Write a :class:`Stage1Video` atomically."""
    _save_video(path, STAGE1_KIND, video, fingerprint)


def load_stage1(path: Path) -> Stage1Video:
    """Read a stage-1 file; :class:`IntermediateError` names the file if it is unusable."""
    return _load_video(path, STAGE1_KIND, Stage1Video, ExpressionProposals)


# -- stage 2 --------------------------------------------------------------------------------

STAGE2_KIND = "referdino-plus/stage2"


@dataclass
class ExpressionRefinement:
    """Stage-2 output for one expression.

    Attributes:
        kept_columns: ``[K] int64`` the columns of the stage-1 record whose queries SAM 2 tracked
            (their model query ids: the stage-1 record's ``query_ids[kept_columns]``).
        prompt_frames: ``[K] int64`` frame index where each kept query prompted SAM 2.
        sam2_masks: ``[T, K, H, W]`` the tracker's masks per object.
        stage1_union: ``[T, H, W]`` union of the kept queries' stage-1 masks (fusion input).
    """

    kept_columns: np.ndarray
    prompt_frames: np.ndarray
    sam2_masks: RunLengthMasks
    stage1_union: RunLengthMasks

    def sam2_union(self) -> RunLengthMasks:
        """``[T, H, W]`` union of the tracked objects (empty when no query was kept), computed
        on the runs."""
        return self.sam2_masks.union()


@dataclass
class Stage2Video:
    video_id: str
    frame_names: list[str]
    height: int
    width: int
    expressions: dict[str, ExpressionRefinement] = field(default_factory=dict)


def save_stage2(path: Path, video: Stage2Video, *, fingerprint: str) -> None:
    """Write a :class:`Stage2Video` atomically."""
    _save_video(path, STAGE2_KIND, video, fingerprint)


def load_stage2(path: Path) -> Stage2Video:
    """Read a stage-2 file; :class:`IntermediateError` names the file if it is unusable."""
    return _load_video(path, STAGE2_KIND, Stage2Video, ExpressionRefinement)


# -- stage 3 --------------------------------------------------------------------------------

STAGE3_KIND = "referdino-plus/stage3"


@dataclass
class ExpressionFusion:
    """Stage-3 output for one expression: fused masks ``[T, H, W]`` and the decision that
    produced them."""

    masks: RunLengthMasks
    multi_object: bool
    frames_sam2_smaller: int
    frames_both_nonempty: int


@dataclass
class Stage3Video:
    video_id: str
    frame_names: list[str]
    height: int
    width: int
    expressions: dict[str, ExpressionFusion] = field(default_factory=dict)


def save_stage3(path: Path, video: Stage3Video, *, fingerprint: str) -> None:
    """Write a :class:`Stage3Video` atomically; the fusion decisions go into the header."""
    _save_video(path, STAGE3_KIND, video, fingerprint, scalars_key="decisions")


def load_stage3(path: Path) -> Stage3Video:
    """Read a stage-3 file; :class:`IntermediateError` names the file if it is unusable."""
    return _load_video(path, STAGE3_KIND, Stage3Video, ExpressionFusion, scalars_key="decisions")
