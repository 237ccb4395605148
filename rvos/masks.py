"""Binary masks: a compact run-length codec, bounding boxes, and logit upsampling.

Stages 2 and 3 only ever consume ``interpolate(mask_logits, frame_size) > 0``, so the pipeline
stores masks as booleans at frame size, run-length encoded: a MeViS frame of 1280x720 with one
blob costs a few dozen bytes instead of 115 KB bit-packed.

A whole video's masks are never needed at frame size at once: they are encoded one frame at a
time as they are made (:class:`RunLengthBuilder`), combined and measured on their runs
(:meth:`RunLengthMasks.union`, :meth:`RunLengthMasks.union_with`,
:meth:`RunLengthMasks.bounding_box_areas`), and decoded one frame at a time where pixels are
needed (:func:`iter_frames`). A 1,200-frame 1280x720 video of one object is 1.1 GB as a bool
stack and a few hundred KB as runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Frames per piece of the operations on runs (unions, box areas): their temporary arrays take
# about a hundred bytes per run, so a long video is worked through a piece at a time.
RUN_CHUNK_FRAMES = 64


@dataclass(frozen=True)
class RunLengthMasks:
    """A stack of binary masks, run-length encoded, one row-major run list per 2-D mask.

    A mask's runs alternate background/foreground and start with background (a mask whose first
    pixel is foreground starts with a zero-length run).

    Attributes:
        shape: full shape ``(*lead, H, W)`` of the stack, e.g. ``(T, K, H, W)``.
        counts: ``[R] uint32`` run lengths of all masks, concatenated.
        offsets: ``[N + 1] int64``; the runs of flat mask ``i`` are ``counts[offsets[i]:offsets[i+1]]``
            where ``N = prod(lead)``.
    """

    shape: tuple[int, ...]
    counts: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.shape) < 2:
            raise ValueError(f"masks need at least 2 dimensions, got shape {self.shape}")
        if self.offsets.shape != (self.num_masks + 1,):
            raise ValueError(
                f"offsets has shape {self.offsets.shape}, expected ({self.num_masks + 1},)"
            )

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[:-2])

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of every mask."""
        return int(self.shape[-2]), int(self.shape[-1])

    @property
    def num_masks(self) -> int:
        return int(np.prod(self.lead_shape, dtype=np.int64))

    @classmethod
    def empty(cls, shape: Sequence[int]) -> RunLengthMasks:
        """A stack of ``shape`` ``(*lead, H, W)`` whose masks are all background."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"masks need at least 2 dimensions, got shape {shape}")
        num_masks = int(np.prod(shape[:-2], dtype=np.int64))
        return cls(
            shape=shape,
            counts=np.full(num_masks, shape[-2] * shape[-1], dtype=np.uint32),
            offsets=np.arange(num_masks + 1, dtype=np.int64),
        )

    @classmethod
    def encode(cls, masks: np.ndarray) -> RunLengthMasks:
        """Encode ``masks: [*lead, H, W]`` (bool or 0/1) into runs."""
        masks = np.asarray(masks)
        if masks.ndim < 2:
            raise ValueError(f"masks need at least 2 dimensions, got shape {masks.shape}")
        shape = tuple(int(s) for s in masks.shape)
        flat = masks.reshape(-1, shape[-2] * shape[-1]).astype(bool, copy=False)
        counts, offsets = _encode_rows(flat)
        return cls(shape=shape, counts=counts, offsets=offsets)

    @classmethod
    def encode_tensor(cls, masks) -> RunLengthMasks:
        """Encode a torch tensor ``masks: [*lead, H, W] bool`` where it lives (e.g. on a GPU).

        The run boundaries are found on the tensor's device; only their positions come back to
        the host (a few hundred integers per mask instead of ``H * W`` booleans). The runs equal
        :meth:`encode`'s of the same masks.
        """
        if masks.dim() < 2:
            raise ValueError(f"masks need at least 2 dimensions, got shape {tuple(masks.shape)}")
        shape = tuple(int(s) for s in masks.shape)
        length = shape[-2] * shape[-1]
        flat = masks.reshape(-1, length).bool()
        padded = flat.new_zeros((flat.shape[0], length + 1))
        padded[:, 1:] = flat
        rows, positions = (padded[:, 1:] != padded[:, :-1]).nonzero(as_tuple=True)
        counts, offsets = _runs_from_boundaries(
            rows.cpu().numpy(), positions.cpu().numpy(), flat.shape[0], length
        )
        return cls(shape=shape, counts=counts, offsets=offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[RunLengthMasks]) -> RunLengthMasks:
        """Stack ``parts`` along the first axis (all must share the trailing shape)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        tail = parts[0].shape[1:]
        if any(p.shape[1:] != tail for p in parts):
            raise ValueError(f"cannot concatenate shapes {[p.shape for p in parts]}")
        counts = np.concatenate([p.counts for p in parts])
        starts = np.cumsum([0] + [len(p.counts) for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)]
        )
        first = sum(p.shape[0] for p in parts)
        return cls(shape=(first, *tail), counts=counts, offsets=offsets.astype(np.int64))

    def decode(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Decode all masks, ``[*lead, H, W] bool``, or flat ``indices`` only, ``[len, H, W] bool``."""
        height, width = self.frame_size
        if indices is None:
            rows = np.arange(self.num_masks)
            out_shape: tuple[int, ...] = self.shape
        else:
            rows = np.asarray(list(indices), dtype=np.int64)
            out_shape = (len(rows), height, width)
        if rows.size == 0:
            return np.zeros(out_shape, dtype=bool)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        run_idx = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
            lengths.sum()
        )
        counts = self.counts[run_idx]
        parity = (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)) % 2
        flat = np.repeat(parity.astype(bool), counts)
        if flat.size != rows.size * height * width:
            raise ValueError("corrupt run-length data: run lengths do not add up to the mask size")
        return flat.reshape(out_shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole stack decoded (``np.asarray(masks)``, comparisons in tests): ``[*lead, H, W]
        bool``. Code that must stay bounded in the number of frames decodes frame by frame
        (:meth:`frame`, :func:`iter_frames`) instead."""
        masks = self.decode()
        return masks if dtype is None else masks.astype(dtype)

    def any(self) -> bool:
        """Whether any mask of the stack has a foreground pixel (no decoding)."""
        return bool(self.any_foreground().any())

    def frame(self, index: int) -> np.ndarray:
        """``[*lead[1:], H, W] bool``: the masks of one index of the first axis (a frame of a
        ``[T, K, H, W]`` or ``[T, H, W]`` stack), decoded alone."""
        length = self.shape[0]
        if not -length <= index < length:
            raise IndexError(f"index {index} outside the first axis of shape {self.shape}")
        index %= length
        per_frame = int(np.prod(self.shape[1:-2], dtype=np.int64))
        return self.decode(range(index * per_frame, (index + 1) * per_frame)).reshape(
            self.shape[1:]
        )

    def select(self, index: int | slice | np.ndarray, axis: int = 0) -> RunLengthMasks:
        """Sub-stack along a leading ``axis`` (runs are copied, nothing is decoded)."""
        lead = self.lead_shape
        if axis >= len(lead):
            raise IndexError(f"axis {axis} is not a leading axis of shape {self.shape}")
        grid = np.arange(self.num_masks).reshape(lead)
        picked = np.take(grid, np.atleast_1d(np.arange(lead[axis])[index]), axis=axis)
        new_lead = picked.shape
        if isinstance(index, int | np.integer):
            new_lead = tuple(s for a, s in enumerate(picked.shape) if a != axis)
        rows = picked.reshape(-1)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        run_idx = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
            lengths.sum()
        )
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return RunLengthMasks(
            shape=(*new_lead, *self.frame_size), counts=self.counts[run_idx], offsets=offsets
        )

    def any_foreground(self) -> np.ndarray:
        """``[*lead] bool``: whether each mask has a foreground pixel (no decoding)."""
        lengths = np.diff(self.offsets)
        # A mask is empty iff it has a single (background) run.
        return (lengths > 1).reshape(self.lead_shape)

    def union(self) -> RunLengthMasks:
        """``[T, H, W]``: per index of the first axis of a ``[T, K, H, W]`` stack, the union of
        its ``K`` masks (all background when ``K = 0``), computed on the runs (no decoding).

        The runs equal :meth:`encode`'s of ``decode().any(axis=1)``.
        """
        if len(self.shape) != 4:
            raise ValueError(f"union takes a [T, K, H, W] stack, got shape {self.shape}")
        return _joined([part._union_objects() for part in self._chunks()])

    def union_with(self, other: RunLengthMasks) -> RunLengthMasks:
        """The pixel-wise union of two stacks of the same shape, computed on the runs (no
        decoding); its runs equal :meth:`encode`'s of ``decode() | other.decode()``.

        Raises:
            ValueError: stacks of different shapes.
        """
        if self.shape != other.shape:
            raise ValueError(f"cannot unite masks of shapes {self.shape} and {other.shape}")
        parts = zip(self._chunks(), other._chunks(), strict=True)
        return _joined([mine._union_with(theirs) for mine, theirs in parts])

    def bounding_box_areas(self) -> np.ndarray:
        """``[*lead] int64``: :func:`bounding_box_area` of every mask, computed on the runs (no
        decoding)."""
        areas = [part._box_areas().reshape(-1) for part in self._chunks()]
        return np.concatenate(areas).reshape(self.lead_shape)

    def _chunks(self) -> Iterator[RunLengthMasks]:
        """The stack in pieces of :data:`RUN_CHUNK_FRAMES` along the first axis (itself when it
        is no longer), so that the run operations' temporary arrays stay a few frames' worth."""
        if len(self.shape) == 2 or self.shape[0] <= RUN_CHUNK_FRAMES:
            yield self
            return
        for first in range(0, self.shape[0], RUN_CHUNK_FRAMES):
            yield self.select(slice(first, first + RUN_CHUNK_FRAMES))

    def _union_objects(self) -> RunLengthMasks:
        """:meth:`union` in one piece."""
        num_frames, num_objects = self.shape[:2]
        mask, start, end = self._foreground_runs()
        shape = (num_frames, *self.frame_size)
        return _from_foreground_runs(shape, mask // max(num_objects, 1), start, end)

    def _union_with(self, other: RunLengthMasks) -> RunLengthMasks:
        """:meth:`union_with` in one piece."""
        parts = [self._foreground_runs(), other._foreground_runs()]
        mask, start, end = (np.concatenate(column) for column in zip(*parts, strict=True))
        return _from_foreground_runs(self.shape, mask, start, end)

    def _box_areas(self) -> np.ndarray:
        """:meth:`bounding_box_areas` in one piece."""
        height, width = self.frame_size
        mask, start, end = self._foreground_runs()
        areas = np.zeros(self.num_masks, dtype=np.int64)
        if mask.size:
            first_row, last_row = start // width, (end - 1) // width
            # A run within one row spans its own columns; a run over two rows or more reaches
            # the last column of its first row and the first column of the next one.
            one_row = first_row == last_row
            first_col = np.where(one_row, start % width, 0)
            last_col = np.where(one_row, (end - 1) % width, width - 1)
            firsts = np.flatnonzero(np.concatenate([[True], mask[1:] != mask[:-1]]))
            lasts = np.concatenate([firsts[1:], [mask.size]]) - 1
            rows = last_row[lasts] - first_row[firsts]
            cols = np.maximum.reduceat(last_col, firsts) - np.minimum.reduceat(first_col, firsts)
            areas[mask[firsts]] = rows * cols
        return areas.reshape(self.lead_shape)

    def _foreground_runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every foreground run of the stack: ``(mask, start, end)``, each ``[F] int64``, the
        flat index of its mask and its pixels ``[start, end)`` in that mask's row-major order,
        sorted by mask, then position.

        Raises:
            ValueError: run lengths that do not add up to the mask size.
        """
        height, width = self.frame_size
        size = height * width
        offsets = self.offsets - self.offsets[0]
        lengths = np.diff(offsets)
        counts = self.counts[self.offsets[0] : self.offsets[-1]].astype(np.int64)
        ends = np.cumsum(counts)
        # Every mask has a run, and each mask's runs end where the next mask begins.
        if (lengths < 1).any() or not np.array_equal(
            ends[offsets[1:] - 1], size * np.arange(1, self.num_masks + 1)
        ):
            raise ValueError("corrupt run-length data: run lengths do not add up to the mask size")
        run_mask = np.repeat(np.arange(self.num_masks, dtype=np.int64), lengths)
        run_in_mask = np.arange(ends.size) - np.repeat(offsets[:-1], lengths)
        foreground = (run_in_mask % 2 == 1) & (counts > 0)
        mask = run_mask[foreground]
        end = ends[foreground] - mask * size
        return mask, end - counts[foreground], end


class RunLengthBuilder:
    """A ``[T, *frame_shape]`` stack encoded one frame at a time, as frames arrive.

    Frames may come in any order; a frame put again replaces the earlier one (a tracker's
    reverse pass rewrites the frame it starts from). Only the runs are kept.

    Args:
        num_frames: ``T``.
        frame_shape: ``(*lead, H, W)`` of each frame's masks, e.g. ``(K, H, W)``.
    """

    def __init__(self, num_frames: int, frame_shape: Sequence[int]) -> None:
        self.frame_shape = tuple(int(s) for s in frame_shape)
        if len(self.frame_shape) < 2:
            raise ValueError(f"frames need at least 2 dimensions, got shape {self.frame_shape}")
        # per frame: (counts [R] uint32, runs per mask [M] int64), None until it is put
        self._frames: list[tuple[np.ndarray, np.ndarray] | None] = [None] * int(num_frames)

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def put(self, frame_idx: int, masks: np.ndarray) -> None:
        """Encode ``masks: [*frame_shape] bool`` as frame ``frame_idx``.

        Raises:
            ValueError: masks of another shape.
            IndexError: a frame outside ``[0, T)``.
        """
        masks = np.asarray(masks)
        if masks.shape != self.frame_shape:
            raise ValueError(
                f"frame {frame_idx}: masks of shape {masks.shape}, expected {self.frame_shape}"
            )
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"frame {frame_idx} outside a stack of {self.num_frames} frames")
        encoded = RunLengthMasks.encode(masks)
        self._frames[frame_idx] = (encoded.counts, np.diff(encoded.offsets))

    def missing(self) -> np.ndarray:
        """``[M] int64``: the frames not put yet, ascending."""
        return np.array([t for t, runs in enumerate(self._frames) if runs is None], dtype=np.int64)

    def build(self) -> RunLengthMasks:
        """The ``[T, *frame_shape]`` stack.

        Raises:
            ValueError: some frames were never put (:meth:`missing`).
        """
        missing = self.missing()
        if missing.size:
            raise ValueError(f"frames {missing.tolist()} were never put")
        shape = (self.num_frames, *self.frame_shape)
        if not self._frames:
            return RunLengthMasks.empty(shape)
        counts = np.concatenate([runs[0] for runs in self._frames])
        lengths = np.concatenate([runs[1] for runs in self._frames])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return RunLengthMasks(shape=shape, counts=counts.astype(np.uint32), offsets=offsets)


def _joined(parts: Sequence[RunLengthMasks]) -> RunLengthMasks:
    """``parts`` stacked along the first axis (the part itself when there is one)."""
    return parts[0] if len(parts) == 1 else RunLengthMasks.concatenate(parts)


# A stack of masks ``[T, ..., H, W]``: a bool array, or its runs.
MaskStack = np.ndarray | RunLengthMasks


def as_run_length(masks: MaskStack) -> RunLengthMasks:
    """``masks`` as runs (encoded if it is an array)."""
    return masks if isinstance(masks, RunLengthMasks) else RunLengthMasks.encode(masks)


def iter_frames(masks: MaskStack) -> Iterator[np.ndarray]:
    """The masks of each index of the first axis (``[..., H, W] bool``), in order; runs are
    decoded one frame at a time."""
    if isinstance(masks, RunLengthMasks):
        for index in range(masks.shape[0]):
            yield masks.frame(index)
    else:
        yield from (np.asarray(frame, dtype=bool) for frame in masks)


def _from_foreground_runs(
    shape: tuple[int, ...], mask: np.ndarray, start: np.ndarray, end: np.ndarray
) -> RunLengthMasks:
    """The stack of ``shape`` whose foreground is the union of runs ``[start, end)`` of flat
    mask ``mask`` (``[F] int64`` each; in any order, overlapping or touching)."""
    height, width = shape[-2:]
    size = height * width
    num_masks = int(np.prod(shape[:-2], dtype=np.int64))
    # One line of positions over all masks, a pixel apart so that no run reaches the next mask.
    line_start, line_end = mask * (size + 1) + start, mask * (size + 1) + end
    order = np.argsort(line_start, kind="stable")
    line_start, line_end, mask = line_start[order], line_end[order], mask[order]
    # A run begins a new merged run where it starts past every earlier run's end.
    reach = np.maximum.accumulate(line_end)
    begins = np.ones(mask.size, dtype=bool)
    begins[1:] = line_start[1:] > reach[:-1]
    firsts = np.flatnonzero(begins)
    merged_mask = mask[firsts]
    merged_start = line_start[firsts] - merged_mask * (size + 1)
    merged_end = (
        np.maximum.reduceat(line_end, firsts) - merged_mask * (size + 1)
        if firsts.size
        else merged_start
    )
    # Boundaries: each merged run's start, and its end unless it ends the mask.
    rows = np.repeat(merged_mask, 2)
    positions = np.stack([merged_start, merged_end], axis=1).reshape(-1)
    inside = positions < size
    counts, offsets = _runs_from_boundaries(rows[inside], positions[inside], num_masks, size)
    return RunLengthMasks(shape=tuple(shape), counts=counts, offsets=offsets)


def _encode_rows(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of every row of ``flat: [N, L] bool`` -> (counts [R] uint32, offsets [N+1])."""
    num_rows, length = flat.shape
    # Boundaries: positions where a run starts, with a virtual background pixel before each row.
    starts = np.empty((num_rows, length), dtype=bool)
    starts[:, :1] = flat[:, :1]
    np.not_equal(flat[:, 1:], flat[:, :-1], out=starts[:, 1:])
    # (flatnonzero of the flat array: many times faster than a 2-D nonzero)
    flat_positions = np.flatnonzero(starts)
    rows, positions = np.divmod(flat_positions, max(length, 1))
    return _runs_from_boundaries(rows, positions, num_rows, length)


def _runs_from_boundaries(
    rows: np.ndarray, positions: np.ndarray, num_rows: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths from the boundaries of ``num_rows`` masks of ``length`` pixels.

    Args:
        rows, positions: ``[B] int64`` each boundary's mask and the pixel where a new run starts
            (the pixel differs from the one before it; before pixel 0 lies background), sorted
            by mask, then position (what ``nonzero`` of a ``[num_rows, length]`` array gives).
    Returns:
        ``(counts [R] uint32, offsets [num_rows + 1] int64)``, as :class:`RunLengthMasks` keeps them.
    """
    per_row = np.bincount(rows, minlength=num_rows)
    ends_at = np.cumsum(per_row)
    positions = np.insert(positions, ends_at, length)
    runs_per_row = per_row + 1
    offsets = np.concatenate([[0], np.cumsum(runs_per_row)]).astype(np.int64)
    previous = np.empty_like(positions)
    previous[1:] = positions[:-1]
    previous[offsets[:-1]] = 0
    return (positions - previous).astype(np.uint32), offsets


def bounding_box_area(mask: np.ndarray) -> int:
    """Area of the tight box of ``mask: [H, W] bool`` as ReferDINO-Plus measures it.

    ``(row_max - row_min) * (col_max - col_min)`` with inclusive pixel indices, so a single row or
    column has area 0; an empty mask has area 0.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[-1] - rows[0]) * int(cols[-1] - cols[0])


def threshold_mask_logits(logits, size: tuple[int, int]):
    """``interpolate(logits, size, mode="bilinear", align_corners=False) > 0`` in float32, computed
    where ``logits`` are (the one definition of a stored mask from a model's mask logits).

    Args:
        logits: ``[t, n, h, w]`` mask logits, a torch tensor on any device.
        size: ``(H, W)`` frame size.
    Returns:
        ``[t, n, H, W] bool`` tensor on the device of ``logits``.
    """
    import torch.nn.functional as F  # only the helpers on logits need torch: light workers

    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False) > 0


def encode_mask_logits(logits, size: tuple[int, int], *, chunk: int = 8) -> RunLengthMasks:
    """Run-length masks at frame size from low-resolution logits (:func:`threshold_mask_logits`),
    ``chunk`` frames at a time, upsampled, thresholded and encoded where ``logits`` are: from a
    GPU tensor only the run boundaries come back to the host (:meth:`RunLengthMasks.encode_tensor`).

    Args:
        logits: ``[T, N, h, w]`` mask logits (numpy array: on the CPU; or torch tensor).
        size: ``(H, W)`` frame size.
    Returns:
        ``[T, N, H, W]`` masks.
    """
    import torch

    logits = torch.as_tensor(logits)
    parts = [
        RunLengthMasks.encode_tensor(threshold_mask_logits(logits[t : t + chunk], size))
        for t in range(0, logits.shape[0], chunk)
    ]
    if not parts:
        return RunLengthMasks.empty((0, logits.shape[1], *size))
    return RunLengthMasks.concatenate(parts)


def upsample_mask_logits(logits, size: tuple[int, int], *, chunk: int = 8) -> np.ndarray:
    """Binary masks at frame size from low-resolution logits, as a host array
    (:func:`threshold_mask_logits`, ``chunk`` frames at a time to bound memory).

    Args:
        logits: ``[T, N, h, w]`` mask logits (numpy array or torch tensor).
        size: ``(H, W)`` frame size.
    Returns:
        ``[T, N, H, W] bool``.
    """
    import torch

    logits = torch.as_tensor(logits)
    frames = [
        threshold_mask_logits(logits[t : t + chunk], size).cpu().numpy()
        for t in range(0, logits.shape[0], chunk)
    ]
    if not frames:
        return np.zeros((0, logits.shape[1], *size), dtype=bool)
    return np.concatenate(frames)
