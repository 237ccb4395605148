"""ReferDINO-Plus stage-1 intermediates (``Annotations_intermediate/<video>.npz``).

The original format is an ``.npz`` holding ``video_path`` (a string), ``size`` (``[H, W]``) and, per
expression id, a 0-d object array wrapping a pickled dict::

    {"scores": [T, N] float32 sigmoid scores,
     "boxes":  [T, N, 4] float32 normalised (cx, cy, w, h),
     "masks":  [T, N, h, w] float32 mask logits at stride 4 of the network input}

Reading never executes pickle code: object members are unpickled by :class:`SafeUnpickler`, which
admits numpy arrays, numpy scalars/dtypes and plain containers and rejects everything else. The
stored absolute ``video_path`` belongs to another machine; callers resolve frames by video id.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvos.io import atomic_output

LEGACY_KEYS = ("scores", "boxes", "masks")
_RESERVED_MEMBERS = ("video_path", "size")

# (module, name) pairs a legacy pickle may reference: what numpy needs to rebuild arrays.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)


class LegacyFormatError(ValueError):
    """A legacy intermediate that cannot be read safely (corrupt, crafted or incomplete)."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and plain containers."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) not in _ALLOWED_GLOBALS:
            raise LegacyFormatError(
                f"refusing to unpickle {module}.{name}: legacy intermediates may only contain "
                "numpy arrays and plain containers"
            )
        return super().find_class(module, name)


@dataclass
class LegacyVideo:
    """One legacy ``<video>.npz``.

    Attributes:
        video_id: the file's stem (the MeViS video id).
        video_path: the absolute frame folder recorded by the machine that wrote the file (unused).
        size: ``(H, W)`` original frame size.
        expressions: ``exp_id -> {"scores": [T,N] f32, "boxes": [T,N,4] f32, "masks": [T,N,h,w] f32}``.
    """

    video_id: str
    video_path: str
    size: tuple[int, int]
    expressions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _load_member(archive: zipfile.ZipFile, name: str) -> object:
    """Read one ``.npy`` member; object arrays go through :class:`SafeUnpickler`."""
    with archive.open(name) as raw:
        stream = io.BytesIO(raw.read())
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise LegacyFormatError(f"unsupported .npy version {version}")
    if not dtype.hasobject:
        stream.seek(0)
        return np.lib.format.read_array(stream, allow_pickle=False)
    if shape != ():
        raise LegacyFormatError(f"object member {name} has shape {shape}, expected a scalar")
    return SafeUnpickler(stream).load()


def _as_float32(video_id: str, exp_id: str, key: str, value: object, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        raise LegacyFormatError(
            f"{video_id}/{exp_id}: '{key}' must be a {ndim}-d array, got {type(value).__name__}"
            + (f" of shape {value.shape}" if isinstance(value, np.ndarray) else "")
        )
    return np.ascontiguousarray(value, dtype=np.float32)


def _parse_expression(video_id: str, exp_id: str, payload: object) -> dict[str, np.ndarray]:
    # np.save wraps the dict in a 0-d object array.
    if isinstance(payload, np.ndarray) and payload.shape == () and payload.dtype.hasobject:
        payload = payload.item()
    if not isinstance(payload, dict) or not set(LEGACY_KEYS) <= set(payload):
        raise LegacyFormatError(
            f"{video_id}/{exp_id}: expected a dict with keys {LEGACY_KEYS}, got {type(payload)}"
        )
    scores = _as_float32(video_id, exp_id, "scores", payload["scores"], 2)
    boxes = _as_float32(video_id, exp_id, "boxes", payload["boxes"], 3)
    masks = _as_float32(video_id, exp_id, "masks", payload["masks"], 4)
    num_frames, num_queries = scores.shape
    if boxes.shape != (num_frames, num_queries, 4) or masks.shape[:2] != (num_frames, num_queries):
        raise LegacyFormatError(
            f"{video_id}/{exp_id}: inconsistent shapes scores {scores.shape}, "
            f"boxes {boxes.shape}, masks {masks.shape}"
        )
    return {"scores": scores, "boxes": boxes, "masks": masks}


def read_legacy_npz(path: str | Path) -> LegacyVideo:
    """Read a ReferDINO-Plus stage-1 ``.npz`` without executing pickle code.

    Raises:
        LegacyFormatError: the file is not a zip, misses ``size``, holds a pickle that references
            anything but numpy arrays/containers, or has inconsistent shapes. The message names
            the file.
    """
    path = Path(path)
    video_id = path.stem
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(n).stem: n for n in archive.namelist() if n.endswith(".npy")}
            if "size" not in members:
                raise LegacyFormatError("missing 'size'")
            size = np.asarray(_load_member(archive, members["size"])).reshape(-1)
            video_path = (
                str(_load_member(archive, members["video_path"])) if "video_path" in members else ""
            )
            expressions = {
                exp_id: _parse_expression(video_id, exp_id, _load_member(archive, member))
                for exp_id, member in members.items()
                if exp_id not in _RESERVED_MEMBERS
            }
    except LegacyFormatError as err:
        raise LegacyFormatError(f"{path}: {err}") from None
    except (zipfile.BadZipFile, ValueError, EOFError, pickle.UnpicklingError, OSError) as err:
        raise LegacyFormatError(f"{path}: not a readable legacy intermediate ({err})") from err
    if size.shape != (2,):
        raise LegacyFormatError(f"{path}: 'size' must be [H, W], got {size.tolist()}")
    return LegacyVideo(
        video_id=video_id,
        video_path=video_path,
        size=(int(size[0]), int(size[1])),
        expressions=expressions,
    )


def write_legacy_npz(path: str | Path, video: LegacyVideo) -> None:
    """Write ``video`` in the ReferDINO-Plus format (readable by its ``refine_from_refdino.py``).

    The per-expression dicts are pickled inside the ``.npz`` as the original expects; the write is
    atomic.
    """
    members: dict[str, np.ndarray] = {
        "video_path": np.asarray(video.video_path),
        "size": np.asarray(video.size, dtype=np.int64),
    }
    for exp_id, arrays in video.expressions.items():
        if exp_id in _RESERVED_MEMBERS:
            raise ValueError(f"expression id {exp_id!r} collides with a reserved member name")
        wrapped = np.empty((), dtype=object)
        wrapped[()] = {key: np.asarray(arrays[key], dtype=np.float32) for key in LEGACY_KEYS}
        members[exp_id] = wrapped
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **members)
