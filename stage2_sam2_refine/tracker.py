"""The tracker interface of stage 2: what a video tracker (SAM 2, SAMURAI, SAM 3, ...) provides.

Stage 2's ReferDINO-Plus logic (which queries to keep, where and how to prompt them, the records
for stage 3: :mod:`stage2_sam2_refine.refine`) is written once against this interface, and a
tracker is chosen by name with ``stage2.tracker`` (:data:`TRACKERS`).

A tracker is a loaded model (:class:`VideoTracker`, built once per worker). It opens a video once
(:meth:`VideoTracker.open_video`) into a :class:`TrackingSession`, which serves every expression
of that video: each frame's image features are computed once, whatever the number of expressions
and propagation passes (up to ``stage2.feature_cache_frames`` frames; beyond, the least recently
used are computed again). What a session holds is bounded in the number of frames: a frame is
decoded when its features are computed (the frames are only indexed, never walked whole), and of
the tracked frames' outputs only those the tracker's memory can still read are kept. For one expression, :meth:`TrackingSession.track`
takes the objects' prompts (:class:`ObjectPrompt`: a mask, a box or clicks, each on one frame),
forgets the previous expression's, and yields each frame's masks and scores
(:class:`TrackedFrame`) in :func:`propagation_order`: forward from the earliest prompted frame to
the last frame, then in reverse from that frame to frame 0 (the reverse pass writes the earliest
prompted frame again, and its masks are the ones that count).

A new tracker is one module with two functions, ``build(options, *, device)`` returning its
:class:`VideoTracker` and ``model_problems(options, *, hint)`` saying what would stop it from
loading (unknown model, missing checkpoint) without loading anything; one line in
:data:`TRACKERS`; and its name in :class:`~stage2_sam2_refine.options.Tracker`, the
configuration's vocabulary.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from stage2_sam2_refine.options import Stage2Options

# A frame as trackers take it: the path of an image file, or an image already decoded (the same
# pixels give the same masks either way).
Frame = str | os.PathLike | Image.Image


def frame_name(frame: Frame, index: int) -> str:
    """How error messages name a frame: its path, or ``#index`` for an image in memory."""
    return f"#{index}" if isinstance(frame, Image.Image) else os.fspath(frame)


def frame_header_size(frame: Frame, *, video_id: str, index: int) -> tuple[int, int]:
    """``(H, W)`` of a frame, read from the file's header only (no pixels are decoded).

    Raises:
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if isinstance(frame, Image.Image):
        return frame.height, frame.width
    try:
        with Image.open(frame) as img:
            return img.height, img.width
    except OSError as err:
        name = frame_name(frame, index)
        raise OSError(f"video {video_id!r}: cannot read frame {name}: {err}") from err


def check_frame_size(video_id: str, name: str, size: tuple[int, int], first: tuple[int, int]):
    """Raise ``ValueError`` naming the video and the frame unless ``size == first`` (``(H, W)``
    of the frame and of the video's first frame)."""
    if size != first:
        raise ValueError(
            f"video {video_id!r}: frame {name} is {size[1]}x{size[0]}, "
            f"the first frame is {first[1]}x{first[0]}"
        )


def check_frame_headers(frames: Sequence[Frame], *, video_id: str) -> tuple[int, int]:
    """``(H, W)`` of the video, checked up front where that is cheap: every frame of a list or
    tuple held in memory (file headers, image sizes), else the first frame only (a sequence that
    decodes frames when indexed is not walked; its frames are checked when decoded).

    Raises:
        ValueError: no frames, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if len(frames) == 0:
        raise ValueError(f"video {video_id!r}: no frames to load")
    first = frame_header_size(frames[0], video_id=video_id, index=0)
    if isinstance(frames, list | tuple):
        for index, frame in enumerate(frames[1:], start=1):
            size = frame_header_size(frame, video_id=video_id, index=index)
            check_frame_size(video_id, frame_name(frame, index), size, first)
    return first


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on one frame; exactly one of ``mask``, ``box`` and ``points`` is set.

    Attributes:
        obj_id: the caller's id of the object (objects are yielded in the order of the prompts).
        frame_idx: the prompted frame.
        mask: ``[H, W] bool`` at frame size.
        box: ``[4] float32`` pixel ``(x1, y1, x2, y2)``.
        points: ``[P, 2] float32`` pixel ``(x, y)`` clicks, with ``labels`` ``[P] int32``
            (1 positive, 0 negative).
        labels: see ``points``.
    """

    obj_id: int
    frame_idx: int
    mask: np.ndarray | None = None
    box: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        kinds = [name for name in ("mask", "box", "points") if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"object {self.obj_id}: a prompt is one of a mask, a box or points, got {kinds}"
            )
        if (self.points is None) != (self.labels is None):
            raise ValueError(f"object {self.obj_id}: points need labels, and labels points")


@dataclass(frozen=True)
class TrackedFrame:
    """Every prompted object on one frame of one pass.

    Attributes:
        frame_idx: the frame.
        reverse: the pass (True: towards frame 0).
        masks: ``[K, H, W] bool`` at frame size, one per object in prompt order.
        scores: ``[K] float32`` the tracker's object-presence logits (> 0: the object is there).
    """

    frame_idx: int
    reverse: bool
    masks: np.ndarray
    scores: np.ndarray


def propagation_order(num_frames: int, prompted_frames: Sequence[int]) -> list[tuple[int, bool]]:
    """The ``(frame_idx, reverse)`` steps one :meth:`TrackingSession.track` yields, in order.

    Forward from the earliest prompted frame ``f0`` to ``T - 1``, then in reverse from ``f0`` to
    0; no reverse pass when ``f0 = 0`` (as SAM 2's ``propagate_in_video``). Every frame appears
    once, except ``f0`` when ``f0 > 0`` (its reverse step comes last and is the one that counts).

    Args:
        num_frames: ``T``.
        prompted_frames: the frames that carry a prompt (not empty).
    Raises:
        ValueError: no prompted frame, or one outside ``[0, T)``.
    """
    if len(prompted_frames) == 0:
        raise ValueError("no prompted frame to propagate from")
    if min(prompted_frames) < 0 or max(prompted_frames) >= num_frames:
        raise ValueError(f"prompted frames {list(prompted_frames)} outside a video of {num_frames}")
    first = int(min(prompted_frames))
    order = [(t, False) for t in range(first, num_frames)]
    if first > 0:
        order += [(t, True) for t in range(first, -1, -1)]
    return order


class TrackingSession(Protocol):
    """One video opened by a :class:`VideoTracker`, for all of its expressions."""

    video_id: str  # named in log and error messages

    @property
    def num_frames(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original frames."""
        ...

    def track(self, prompts: Sequence[ObjectPrompt]) -> Iterator[TrackedFrame]:
        """Track the prompted objects over the whole video, in :func:`propagation_order`.

        Prompts of earlier calls are forgotten; the video's image features are kept (a bounded
        number of frames' worth). Each frame's masks are handed on as yielded, not kept.
        """
        ...


class VideoTracker(Protocol):
    """A loaded tracking model (one per worker)."""

    @property
    def device(self) -> torch.device: ...

    def open_video(
        self, frames: Sequence[Frame], *, video_id: str, offload: bool = False
    ) -> TrackingSession:
        """Open a video for all of its expressions.

        Args:
            frames: the video's frames, in order; only ``len(frames)`` and ``frames[t]`` are used
                (a sequence that decodes a frame when indexed keeps the video out of memory).
            video_id: named in log and error messages.
            offload: keep frames, features and memories in host memory (e.g. after running out of
                device memory), whatever the options say.
        """
        ...


# ``stage2.tracker`` name -> ``module:function`` building its :class:`VideoTracker` from the
# ``stage2`` options and a device (the module also defines ``model_problems``). A new tracker is
# one module and one line here.
TRACKERS: dict[str, str] = {
    "sam2": "stage2_sam2_refine.sam2_tracker:build",  # SAM 2.1, the official sam2 package
    "samurai": "stage2_sam2_refine.samurai:build",  # SAMURAI's motion-aware selection on SAM 2.1
    "sam3": "stage2_sam2_refine.sam3:build",  # SAM 3's tracker, through transformers
}


def _tracker_module(options: Stage2Options) -> tuple[ModuleType, str]:
    """The module of the tracker ``options.tracker`` names, and its build function's name.

    Raises:
        ValueError: a name that is not in :data:`TRACKERS`.
    """
    name = str(options.tracker)
    if name not in TRACKERS:
        raise ValueError(
            f"stage2.tracker={name}: unknown tracker; expected one of {', '.join(TRACKERS)}"
        )
    module_name, _, function = TRACKERS[name].partition(":")
    return importlib.import_module(module_name), function


def build_tracker(options: Stage2Options, *, device: str | torch.device = "cpu") -> VideoTracker:
    """The tracker ``options.tracker`` names, loaded on ``device``.

    Raises:
        ValueError: a name that is not in :data:`TRACKERS`.
    """
    module, function = _tracker_module(options)
    return getattr(module, function)(options, device=device)


def model_problems(options: Stage2Options, *, hint: str) -> list[str]:
    """What would stop :func:`build_tracker` from loading the tracker, found without loading it
    (one line each): an unknown ``stage2.tracker``, or its module's ``model_problems`` (unknown
    model, missing or unreadable checkpoint; ``hint``: how to get the weights)."""
    try:
        module, _ = _tracker_module(options)
    except ValueError as err:
        return [str(err)]
    return module.model_problems(options, hint=hint)
