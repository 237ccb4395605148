"""``stage2.tracker=sam2``: SAM 2.1 from the official ``sam2`` package, as a video tracker.

:class:`Sam2Tracker` is the :class:`~stage2_sam2_refine.tracker.VideoTracker` around a built
:class:`~stage2_sam2_refine.predictor.SharedFeatureVideoPredictor` (SAM 2's own predictor with a
per-video feature cache). In a video it opens (:class:`Sam2Session`), a frame is decoded when its
image features are computed, and they are computed once (for the ``stage2.feature_cache_frames``
most recently used frames); for every expression SAM 2's own calls run: ``add_new_mask`` /
``add_new_points_or_box`` per object, then ``propagate_in_video`` forward and in reverse, and
after each step the tracked outputs no later step can read are dropped
(:meth:`~stage2_sam2_refine.predictor.SharedFeatureVideoPredictor.drop_unreachable_outputs`).

Variants of SAM 2's tracking (e.g. :mod:`stage2_sam2_refine.samurai`) subclass the predictor and
reuse this module's :func:`build_sam2_tracker` with their class.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rvos.options import CacheDevice, autocast_to_dtype
from rvos.weights import checkpoint_setting_problem
from stage2_sam2_refine.build import build_sam2_predictor, resolve_sam2_config
from stage2_sam2_refine.options import Stage2Options
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor, VideoSession
from stage2_sam2_refine.tracker import Frame, ObjectPrompt, TrackedFrame

logger = logging.getLogger(__name__)


class Sam2Session:
    """One video opened by a :class:`Sam2Tracker` (a
    :class:`~stage2_sam2_refine.tracker.TrackingSession`): SAM 2's ``init_state`` once, on the
    first expression that has objects to track; ``reset_state`` before each expression's prompts.

    Args:
        predictor: the tracker's predictor.
        video: the video's decoded frames and feature cache (``predictor.open_video``).
        autocast: CUDA mixed-precision dtype of the tracking, or None (float32).
    """

    def __init__(
        self,
        predictor: SharedFeatureVideoPredictor,
        video: VideoSession,
        *,
        autocast: torch.dtype | None,
    ) -> None:
        self.predictor = predictor
        self.video = video
        self.video_id = video.video_id
        self.autocast = autocast
        self._state: dict[str, Any] | None = None  # SAM 2's inference state, made on first use

    @property
    def num_frames(self) -> int:
        return self.video.num_frames

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original frames."""
        return self.video.size

    def track(self, prompts: Sequence[ObjectPrompt]) -> Iterator[TrackedFrame]:
        """SAM 2 on the prompted objects: forward from the earliest prompted frame, then in
        reverse (:func:`~stage2_sam2_refine.tracker.propagation_order`).

        Each step runs in inference mode (and under CUDA autocast when configured); the caller's
        code between steps runs outside both.

        Raises:
            ValueError: no prompts.
        """
        if len(prompts) == 0:
            raise ValueError(f"video {self.video_id!r}: nothing to track (no prompts)")
        return _each_step_in(self._step_context, self._track(list(prompts)))

    def _step_context(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast is not None and self.video.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=self.autocast))
        return stack

    def _track(self, prompts: list[ObjectPrompt]) -> Iterator[TrackedFrame]:
        predictor = self.predictor
        if self._state is None:  # once per video (an expression without queries never gets here)
            self._state = predictor.init_state(self.video)
        state = self._state
        predictor.reset_state(state)
        for prompt in prompts:
            add_prompt(predictor, state, prompt)
        start = min(prompt.frame_idx for prompt in prompts)  # where both passes start
        for reverse in (False, True):
            for frame_idx, _, mask_logits in predictor.propagate_in_video(state, reverse=reverse):
                frame = TrackedFrame(
                    frame_idx=frame_idx,
                    reverse=reverse,
                    masks=(mask_logits > 0).squeeze(1).cpu().numpy(),
                    scores=_presence_logits(state, frame_idx),
                )
                # the step's scores are read: drop what no later step of either pass reads
                predictor.drop_unreachable_outputs(
                    state,
                    frame_idx=frame_idx,
                    reverse=reverse,
                    reverse_from=start if not reverse and start > 0 else None,
                )
                yield frame


def _each_step_in(
    context: Callable[[], contextlib.AbstractContextManager], steps: Iterator[Any]
) -> Iterator[Any]:
    """``steps``, each one computed inside a fresh ``context()`` and handed out after it ends (a
    generator that yielded inside a ``with`` would leave the context on in the caller)."""
    while True:
        with context():
            item = next(steps, _DONE)
        if item is _DONE:
            return
        yield item


_DONE = object()


def add_prompt(
    predictor: SharedFeatureVideoPredictor, state: dict[str, Any], prompt: ObjectPrompt
) -> None:
    """One object's prompt, through SAM 2's ``add_new_mask`` / ``add_new_points_or_box``."""
    if prompt.mask is not None:
        predictor.add_new_mask(state, prompt.frame_idx, prompt.obj_id, prompt.mask)
    elif prompt.box is not None:
        predictor.add_new_points_or_box(state, prompt.frame_idx, prompt.obj_id, box=prompt.box)
    else:
        predictor.add_new_points_or_box(
            state, prompt.frame_idx, prompt.obj_id, points=prompt.points, labels=prompt.labels
        )


def _presence_logits(state: dict[str, Any], frame_idx: int) -> np.ndarray:
    """``[K] float32`` SAM 2's object-score logit of each object on ``frame_idx`` (as stored by
    its propagation in the inference state)."""
    logits = []
    for outputs in state["output_dict_per_obj"].values():
        out = outputs["non_cond_frame_outputs"].get(frame_idx)
        if out is None:
            out = outputs["cond_frame_outputs"][frame_idx]
        logits.append(float(out["object_score_logits"].reshape(-1)[0]))
    return np.asarray(logits, dtype=np.float32)


@dataclass(frozen=True)
class Sam2Tracker:
    """SAM 2 as a :class:`~stage2_sam2_refine.tracker.VideoTracker`.

    Attributes:
        predictor: the built predictor (SAM 2's, or a variant's subclass of it), in eval mode.
        options: the ``stage2`` options; this class reads ``autocast``, ``offload_video_to_cpu``,
            ``offload_state_to_cpu`` and ``feature_cache_device``.
    """

    predictor: SharedFeatureVideoPredictor
    options: Stage2Options

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def open_video(
        self, frames: Sequence[Frame], *, video_id: str, offload: bool = False
    ) -> Sam2Session:
        """Decode a video once for all of its expressions (see
        :meth:`~stage2_sam2_refine.tracker.VideoTracker.open_video`)."""
        options = self.options
        video = self.predictor.open_video(
            frames,
            video_id=video_id,
            offload_video_to_cpu=offload or options.offload_video_to_cpu,
            offload_state_to_cpu=offload or options.offload_state_to_cpu,
            feature_cache_device=CacheDevice.cpu if offload else options.feature_cache_device,
            feature_cache_frames=options.feature_cache_frames,
        )
        return Sam2Session(self.predictor, video, autocast=autocast_to_dtype(options.autocast))


def build_sam2_tracker(
    options: Stage2Options,
    *,
    device: str | torch.device = "cpu",
    predictor_cls: type[SharedFeatureVideoPredictor] = SharedFeatureVideoPredictor,
    overrides: Mapping[str, Any] | None = None,
) -> Sam2Tracker:
    """SAM 2 as ``options`` configure it, loaded on ``device``.

    Args:
        options: the ``stage2`` options; ``model`` is ``sam2.1_hiera_{t,s,b+,l}`` or a SAM 2 YAML
            path, ``checkpoint`` its weights (missing: ``FileNotFoundError`` naming
            ``download_ckpts.sh``).
        predictor_cls: :class:`SharedFeatureVideoPredictor` or a variant's subclass.
        overrides: the variant's ``model.<key>`` settings.
    """
    predictor = build_sam2_predictor(
        options.model,
        options.checkpoint,
        device=device,
        predictor_cls=predictor_cls,
        overrides=overrides,
    )
    return Sam2Tracker(predictor, options)


def build(options: Stage2Options, *, device: str | torch.device = "cpu") -> Sam2Tracker:
    """``stage2.tracker=sam2``: SAM 2 as released (see :func:`build_sam2_tracker`)."""
    return build_sam2_tracker(options, device=device)


def model_problems(options: Stage2Options, *, hint: str) -> list[str]:
    """What stops SAM 2 from loading, found without loading it: an unknown ``stage2.model``, a
    missing or unreadable ``stage2.checkpoint``, or one of another model family (only the file's
    index is read; ``hint``: how to get it); a hub reference is resolved first (fetched if
    needed, checked against the hub: :func:`rvos.weights.resolve_weights`)."""
    problems = []
    try:
        resolve_sam2_config(options.model)
    except FileNotFoundError as err:
        problems.append(f"stage2.model={options.model}: {err}")
    problem = checkpoint_setting_problem(
        options.checkpoint, key="stage2.checkpoint", family="SAM 2", hint=hint
    )
    return problems + ([problem] if problem else [])
