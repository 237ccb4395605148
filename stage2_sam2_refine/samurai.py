"""SAMURAI: motion-aware mask choice and memory selection for SAM 2 (``stage2.tracker=samurai``).

SAMURAI (Yang et al., arXiv 2411.11922; reference code ``yangchris11/samurai``) changes two things
in SAM 2's video tracking, without retraining:

1. **Motion-aware mask choice.** On every tracked frame SAM 2's decoder proposes three candidate
   masks with predicted IoUs. Each object keeps a constant-velocity Kalman filter on its box
   (:mod:`stage2_sam2_refine.kalman`). Once the track has been stable for
   ``stable_frames_threshold`` frames, the candidate maximising
   ``kf_score_weight * IoU(Kalman box, candidate box) + (1 - kf_score_weight) * predicted IoU``
   is kept; before that, the highest predicted IoU wins and only feeds the filter.
2. **Motion-aware memory.** Instead of the last ``num_maskmem - 1`` frames, the spatial memory
   holds the most recent past frames whose predicted IoU, object score and motion score pass
   thresholds; the frame just before the current one is always kept.

How it plugs into SAM 2: :class:`SamuraiVideoPredictor` is a
:class:`~stage2_sam2_refine.predictor.SharedFeatureVideoPredictor`, so SAM 2's own ``track_step``
runs on every frame; SAMURAI replaces the two SAM 2 methods that make its decisions:
``_prepare_memory_conditioned_features`` on tracked (prompt-free) frames (SAM 2's memory attention
over the frames :meth:`~SamuraiVideoPredictor._samurai_memory_frames` selects) and
``_forward_sam_heads`` (SAM 2's prompt encoder and mask decoder with SAMURAI's presence threshold
and, on tracked frames, the motion-aware choice: :meth:`~SamuraiVideoPredictor._samurai_decode`).
A wrapper around ``_run_single_frame_inference`` hands them the object's motion state for the
direction of the pass, and keeps the kept mask's scores with every frame's output
(:data:`IOU_SCORE_KEY`, :data:`KF_SCORE_KEY`) for the memory selection of later frames.

Unlike the published code (one filter on the model object, shared by every object, expression
and direction), the motion state here belongs to one object and one propagation direction of one
inference state: key ``(obj_id, reverse)`` in :class:`SamuraiState`, stored in the inference
state, cleared by ``reset_state`` and at the start of every ``propagate_in_video`` pass, and
handed to SAM 2's step on that object and frame only for the length of that step
(:class:`SamuraiStep`).

Differences from the published code, all deliberate:

- an empty chosen mask is not a measurement: the filter is not initiated or updated with a
  ``[0, 0, 0, 0]`` box, and the track counts as unstable (``stable_frames = 0``);
- memory candidates are every past frame in the tracking direction that has an output (the
  published loop skips frames 0 and 1, only looks backwards in time and fails on a missing frame),
  so prompts in mid-video and the reverse pass work;
- a prompted frame goes through SAM 2's step with SAMURAI's presence threshold
  (``min_obj_score_logits``, as published) and the highest predicted IoU among multimask outputs;
  it is recorded with IoU 1 and no motion score (published, for a mask prompt: 1 and 1; the same
  for any ``memory_bank_kf_score_threshold`` below 1; a prompted frame's IoU only matters when
  there are more prompted frames than ``max_cond_frames_in_attn``);
- ``memory_temporal_stride_for_eval`` is ignored, as in SAMURAI mode of the published code.

Memory selected among admitted frames at any distance still leaves the memory bounded in the
number of frames: between steps, the tracker keeps, per object, only what SAMURAI may still
select (:meth:`SamuraiVideoPredictor.tracked_frames_in_reach`: the object pointers' frames and the
``num_maskmem - 1`` most recent admitted frames) and drops the rest.

Selecting it: ``stage2.tracker=samurai`` (:func:`build`: SAM 2's tracker with
:class:`SamuraiVideoPredictor`), with the ``stage2.samurai`` section of ``configs/pipeline.yaml``,
where each value's source is given.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames

from stage2_sam2_refine.build import class_path
from stage2_sam2_refine.kalman import KalmanBoxFilter
from stage2_sam2_refine.options import SamuraiOptions, Stage2Options
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor
from stage2_sam2_refine.sam2_tracker import Sam2Tracker, build_sam2_tracker
from stage2_sam2_refine.sam2_tracker import model_problems as sam2_model_problems

logger = logging.getLogger(__name__)

STATE_KEY = "samurai"  # where the SamuraiState lives in a SAM 2 inference state
IOU_SCORE_KEY = "best_iou_score"  # per-frame output: predicted IoU of the kept mask, [1] float32
KF_SCORE_KEY = "kf_score"  # per-frame output: IoU with the Kalman box, [1] float32, NaN if unused

# --------------------------------------------------------------------------------------------------
# Pure parts: boxes, candidate choice, memory selection
# --------------------------------------------------------------------------------------------------


def mask_boxes(masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes of ``masks > 0``.

    Args:
        masks: ``[K, H, W]`` mask logits (any float dtype).

    Returns:
        boxes: ``[K, 4]`` float64 ``(x0, y0, x1, y1)`` pixel indices, max inclusive (SAMURAI's
            convention); zeros for an empty mask.
        valid: ``[K]`` bool, False for an empty mask.
    """
    fg = masks > 0
    rows, cols = fg.any(dim=2), fg.any(dim=1)  # [K, H], [K, W]
    valid = rows.any(dim=1)
    height, width = masks.shape[-2:]
    y0 = rows.float().argmax(dim=1)
    y1 = height - 1 - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - 1 - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1) * valid[:, None]
    return boxes.cpu().numpy().astype(np.float64), valid.cpu().numpy()


def box_iou(box: np.ndarray, boxes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """IoU of one box ``[4]`` with ``boxes`` ``[K, 4]`` (all xyxy); ``[K]`` float64.

    ``valid`` ``[K]`` bool marks real boxes; an invalid box (empty mask) has IoU 0.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2])
    inter = np.clip(wh, 0, None).prod(axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    union = area + areas - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if valid is not None:
        iou = np.where(valid, iou, 0.0)
    return iou


def motion_weighted_scores(
    pred_ious: np.ndarray, motion_ious: np.ndarray, kf_score_weight: float
) -> np.ndarray:
    """Candidate scores ``w * motion_iou + (1 - w) * predicted_iou``; ``[K]`` float64."""
    motion = np.asarray(motion_ious, dtype=np.float64)
    predicted = np.asarray(pred_ious, dtype=np.float64)
    return kf_score_weight * motion + (1.0 - kf_score_weight) * predicted


@dataclass(frozen=True)
class CandidateChoice:
    """The kept candidate of one frame: its index, predicted IoU, and Kalman-box IoU (``None``
    while the track is not yet stable)."""

    index: int
    iou_score: float
    kf_score: float | None = None


class ObjectMotion:
    """Motion state of one object in one propagation direction: its Kalman filter and the number
    of consecutive trusted frames (``stable_frames``)."""

    def __init__(self, config: SamuraiOptions) -> None:
        self.config = config
        self.filter = KalmanBoxFilter()
        self.stable_frames = 0

    def choose(
        self, pred_ious: np.ndarray, boxes: np.ndarray, valid: np.ndarray
    ) -> CandidateChoice:
        """Pick one of ``K`` candidate masks and advance the filter by one frame.

        Args:
            pred_ious: ``[K]`` predicted IoUs of the candidates.
            boxes: ``[K, 4]`` xyxy boxes of the candidates (see :func:`mask_boxes`).
            valid: ``[K]`` bool, False for an empty candidate.
        """
        pred_ious = np.asarray(pred_ious, dtype=np.float64)
        if not self.filter.initialized or self.stable_frames == 0:
            return self._restart(pred_ious, boxes, valid)
        predicted_box = self.filter.predict()
        if self.stable_frames < self.config.stable_frames_threshold:
            return self._warm_up(pred_ious, boxes, valid)
        motion_ious = box_iou(predicted_box, boxes, valid)
        scores = motion_weighted_scores(pred_ious, motion_ious, self.config.kf_score_weight)
        best = int(np.argmax(scores))
        # a stable track is kept unless the chosen mask falls below the IoU threshold
        if valid[best] and not pred_ious[best] < self.config.stable_ious_threshold:
            self.filter.update(boxes[best])
        else:
            self.stable_frames = 0
        return CandidateChoice(best, float(pred_ious[best]), float(motion_ious[best]))

    def _restart(
        self, pred_ious: np.ndarray, boxes: np.ndarray, valid: np.ndarray
    ) -> CandidateChoice:
        """(Re)start the track from the candidate with the highest predicted IoU."""
        best = int(np.argmax(pred_ious))
        if valid[best]:
            self.filter.initiate(boxes[best])
            self.stable_frames = 1
        return CandidateChoice(best, float(pred_ious[best]))

    def _warm_up(
        self, pred_ious: np.ndarray, boxes: np.ndarray, valid: np.ndarray
    ) -> CandidateChoice:
        """Not yet stable: keep the highest predicted IoU, and count it if it is trusted."""
        best = int(np.argmax(pred_ious))
        if valid[best] and pred_ious[best] > self.config.stable_ious_threshold:
            self.filter.update(boxes[best])
            self.stable_frames += 1
        else:
            self.stable_frames = 0
        return CandidateChoice(best, float(pred_ious[best]))


@dataclass(frozen=True)
class MemoryCandidate:
    """Scores of one past frame's output; ``None`` means "not recorded" and passes its test."""

    frame_idx: int
    iou_score: float | None = None  # predicted IoU of the kept mask
    object_score: float | None = None  # object-score logit
    kf_score: float | None = None  # IoU of the kept mask's box with the Kalman box


def admits_to_memory(
    candidate: MemoryCandidate,
    *,
    iou_threshold: float = 0.5,
    obj_score_threshold: float = 0.0,
    kf_score_threshold: float = 0.0,
) -> bool:
    """Whether a past frame may enter the memory: every recorded score strictly above its
    threshold (defaults: SAMURAI ``memory_bank_{iou,obj_score,kf_score}_threshold``)."""
    tests = (
        (candidate.iou_score, iou_threshold),
        (candidate.object_score, obj_score_threshold),
        (candidate.kf_score, kf_score_threshold),
    )
    return all(score is None or score > threshold for score, threshold in tests)


def select_memory_frames(
    candidates: Iterable[MemoryCandidate],
    *,
    previous_frame_idx: int,
    num_slots: int = 6,
    max_admitted: int = 15,
    iou_threshold: float = 0.5,
    obj_score_threshold: float = 0.0,
    kf_score_threshold: float = 0.0,
) -> list[int]:
    """Frames of the spatial memory, most recent first.

    Args:
        candidates: past frames that have an output, most recent (in tracking order) first;
            consumed lazily, only until ``max_admitted`` frames are admitted.
        previous_frame_idx: the frame just before the current one in tracking order; it always
            takes the first slot, admitted or not, even without an output (then the slot stays
            empty, as in SAM 2 when that frame is a conditioning frame).
        num_slots: memory slots for past frames (6: SAM 2.1 ``num_maskmem`` 7 minus the
            conditioning slot).
        max_admitted: admitted frames after which the search stops (15: SAM 2
            ``max_obj_ptrs_in_encoder`` 16 minus one, as in SAMURAI).
        iou_threshold, obj_score_threshold, kf_score_threshold: see :func:`admits_to_memory`.

    Returns:
        Up to ``num_slots`` frame indices; element 0 is ``previous_frame_idx``, the rest are the
        most recent admitted frames. Slot ``i`` gets SAM 2's temporal position ``num_slots - i``.
    """
    admitted: list[int] = []
    for candidate in candidates:
        if len(admitted) >= max_admitted:
            break
        if admits_to_memory(
            candidate,
            iou_threshold=iou_threshold,
            obj_score_threshold=obj_score_threshold,
            kf_score_threshold=kf_score_threshold,
        ):
            admitted.append(candidate.frame_idx)
    others = [t for t in admitted if t != previous_frame_idx]
    return ([previous_frame_idx] + others)[:num_slots]


class SamuraiState:
    """Motion states of one inference state, one :class:`ObjectMotion` per
    ``(obj_id, reverse)``; created on first use."""

    def __init__(self, config: SamuraiOptions) -> None:
        self.config = config
        self.motions: dict[tuple[Any, bool], ObjectMotion] = {}

    def motion(self, obj_id: Any, reverse: bool) -> ObjectMotion:
        """The motion state of object ``obj_id`` (the caller's id) tracked in direction
        ``reverse``."""
        key = (obj_id, bool(reverse))
        if key not in self.motions:
            self.motions[key] = ObjectMotion(self.config)
        return self.motions[key]

    def reset(self, *, reverse: bool | None = None) -> None:
        """Forget the motion states of one direction, or of both when ``reverse`` is None."""
        if reverse is None:
            self.motions.clear()
            return
        for key in [k for k in self.motions if k[1] == bool(reverse)]:
            del self.motions[key]

    def drop_object(self, obj_id: Any) -> None:
        """Forget both directions of ``obj_id``."""
        for key in [k for k in self.motions if k[0] == obj_id]:
            del self.motions[key]


def _scalar(value: torch.Tensor | float | None) -> float | None:
    """A stored per-object score as a float (the lowest if several); None if absent or NaN."""
    if value is None:
        return None
    number = float(torch.as_tensor(value).min())
    return None if math.isnan(number) else number


def memory_candidate(frame_idx: int, out: dict[str, Any]) -> MemoryCandidate:
    """The scores recorded in one frame output of a SAM 2 per-object output dict."""
    return MemoryCandidate(
        frame_idx=frame_idx,
        iou_score=_scalar(out.get(IOU_SCORE_KEY)),
        object_score=_scalar(out.get("object_score_logits")),
        kf_score=_scalar(out.get(KF_SCORE_KEY)),
    )


# --------------------------------------------------------------------------------------------------
# SAM 2 integration
# --------------------------------------------------------------------------------------------------


def samurai_model_overrides(config: SamuraiOptions) -> dict[str, Any]:
    """``model.<key>`` settings that make a SAM 2 YAML build a :class:`SamuraiVideoPredictor`
    with ``config`` (for :func:`stage2_sam2_refine.build.build_sam2_predictor`'s ``overrides``):
    the ``stage2.samurai`` section as the constructor's ``samurai`` argument."""
    return {"samurai": {"_target_": class_path(SamuraiOptions), **dataclasses.asdict(config)}}


def build(options: Stage2Options, *, device: str | torch.device = "cpu") -> Sam2Tracker:
    """``stage2.tracker=samurai``: SAM 2 with :class:`SamuraiVideoPredictor` and the
    ``stage2.samurai`` hyper-parameters."""
    return build_sam2_tracker(
        options,
        device=device,
        predictor_cls=SamuraiVideoPredictor,
        overrides=samurai_model_overrides(options.samurai),
    )


def model_problems(options: Stage2Options, *, hint: str) -> list[str]:
    """SAMURAI runs SAM 2's model and checkpoint: the problems
    :func:`stage2_sam2_refine.sam2_tracker.model_problems` finds."""
    return sam2_model_problems(options, hint=hint)


@dataclass
class SamuraiStep:
    """One object on one frame while SAM 2's step runs on it (what the SAMURAI hooks share).

    Attributes:
        motion: the object's motion state for the direction of the pass on a tracked frame;
            None on a prompted frame (SAM 2's memory, highest predicted IoU).
        choice: the kept candidate, once the SAM head has run.
    """

    motion: ObjectMotion | None
    choice: CandidateChoice | None = None


def _obj_idx_of_output_dict(inference_state: dict[str, Any], output_dict: dict) -> int:
    """The object slot whose output dict is ``output_dict`` (SAM 2 passes only the dict)."""
    for obj_idx, obj_output_dict in inference_state["output_dict_per_obj"].items():
        if obj_output_dict is output_dict:
            return obj_idx
    raise ValueError("output_dict is not an object's output dict of this inference state")


class SamuraiDecoding(NamedTuple):
    """SAMURAI's SAM-head output for ``B`` objects (1 on a tracked frame), ``K`` candidates."""

    low_res_multimasks: torch.Tensor  # [B, K, S/4, S/4] float32 logits of every candidate
    high_res_multimasks: torch.Tensor  # [B, K, S, S] float32 logits of every candidate
    ious: torch.Tensor  # [B, K] predicted IoUs
    low_res_masks: torch.Tensor  # [B, 1, S/4, S/4] float32 logits of the kept candidate
    high_res_masks: torch.Tensor  # [B, 1, S, S] float32 logits of the kept candidate
    obj_ptr: torch.Tensor  # [B, C] object pointer from the kept candidate's output token
    object_score_logits: torch.Tensor  # [B, 1] presence logit
    choice: CandidateChoice  # row 0: which candidate, its predicted IoU and Kalman IoU


class SamuraiVideoPredictor(SharedFeatureVideoPredictor):
    """:class:`SharedFeatureVideoPredictor` with SAMURAI tracking (``stage2.tracker=samurai``).

    Build it with ``build_sam2_predictor(model, checkpoint, predictor_cls=SamuraiVideoPredictor,
    overrides=samurai_model_overrides(config))`` (or :func:`build` for the tracker). SAM 2's own
    step runs on every frame; SAMURAI replaces ``_prepare_memory_conditioned_features`` on
    tracked frames and ``_forward_sam_heads``, wraps ``_run_single_frame_inference`` to give them
    the object's motion state, and extends ``propagate_in_video``, ``_reset_tracking_results``
    and ``remove_object`` to reset motion states.

    On construction it also turns on the multimask outputs SAMURAI chooses from on every tracked
    frame, ``multimask_output_in_sam``, ``multimask_output_for_tracking`` and
    ``multimask_min_pt_num=0`` (tracked frames have no points), if the YAML did not (SAM 2.1's
    do); ``use_multimask_token_for_obj_ptr`` is left as configured (true in SAM 2.1).
    """

    def __init__(
        self,
        *,
        samurai: SamuraiOptions,  # SAMURAI's hyper-parameters: the stage2.samurai section
        **kwargs: Any,  # SAM 2's own (SharedFeatureVideoPredictor)
    ) -> None:
        super().__init__(**kwargs)
        self._step: SamuraiStep | None = None  # the object and frame being tracked, if any
        if self.num_maskmem == 0:
            raise ValueError("SAMURAI selects memory frames: it needs num_maskmem > 0")
        self.samurai = samurai
        self._enable_multimask_tracking()

    def _enable_multimask_tracking(self) -> None:
        """Turn on the multimask outputs SAMURAI chooses from on tracked (point-less) frames."""
        wanted = {
            "multimask_output_in_sam": True,
            "multimask_output_for_tracking": True,
            "multimask_min_pt_num": min(self.multimask_min_pt_num, 0),
        }
        for name, value in wanted.items():
            if getattr(self, name) != value:
                logger.info("SAMURAI mode sets %s=%s (was %s)", name, value, getattr(self, name))
                setattr(self, name, value)

    # ---- per-object, per-direction state -----------------------------------------------------

    def samurai_state(self, inference_state: dict[str, Any]) -> SamuraiState:
        """The SAMURAI motion states of ``inference_state`` (created on first use, so every
        expression's fresh state starts with none)."""
        state = inference_state.get(STATE_KEY)
        if state is None:
            state = inference_state[STATE_KEY] = SamuraiState(self.samurai)
        return state

    def _reset_tracking_results(self, inference_state: dict[str, Any]) -> None:
        """SAM 2's reset of all prompts and outputs, and of every motion state."""
        super()._reset_tracking_results(inference_state)
        self.samurai_state(inference_state).reset()

    def remove_object(
        self,
        inference_state: dict[str, Any],
        obj_id: Any,
        strict: bool = False,
        need_output: bool = True,
    ):
        """SAM 2's ``remove_object``, forgetting the object's motion states."""
        self.samurai_state(inference_state).drop_object(obj_id)
        return super().remove_object(
            inference_state, obj_id, strict=strict, need_output=need_output
        )

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """:meth:`SharedFeatureVideoPredictor.propagate_in_video`; every pass starts with fresh
        motion states for its direction, so the reverse pass never sees the forward pass's
        filters."""
        self.samurai_state(inference_state).reset(reverse=reverse)
        yield from super().propagate_in_video(
            inference_state,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )

    # ---- tracked outputs out of reach --------------------------------------------------------

    def tracked_frames_in_reach(
        self, outputs: dict[int, dict[str, Any]], *, frame_idx: int, reverse: bool
    ) -> set[int]:
        """The frames among one object's tracked outputs that SAMURAI's later steps may still
        read (see :meth:`SharedFeatureVideoPredictor.drop_unreachable_outputs`): the object
        pointers' frames, the ``max_obj_ptrs_in_encoder - 1`` up to ``frame_idx`` (at least
        ``frame_idx``, the next step's previous frame), and the ``num_maskmem - 1`` most recent
        frames admitted to the memory (:func:`admits_to_memory`) at any distance.

        Admission depends on a frame's own scores only, so a frame past both is never selected
        again: a later step selects among the frames it admits first, the most recent ones.
        """
        sign = -1 if reverse else 1
        behind = sorted(
            (t for t in outputs if (frame_idx - t) * sign >= 0),
            key=lambda t: (frame_idx - t) * sign,
        )
        pointers = self.max_obj_ptrs_in_encoder - 1 if self.use_obj_ptrs_in_encoder else 0
        window = max(1, pointers)
        near = {t for t in behind if (frame_idx - t) * sign < window}
        admitted = (t for t in behind if self._admits(memory_candidate(t, outputs[t])))
        return near | set(itertools.islice(admitted, self.num_maskmem - 1))

    def _admits(self, candidate: MemoryCandidate) -> bool:
        """Whether a past frame passes SAMURAI's memory thresholds."""
        return admits_to_memory(
            candidate,
            iou_threshold=self.samurai.memory_bank_iou_threshold,
            obj_score_threshold=self.samurai.memory_bank_obj_score_threshold,
            kf_score_threshold=self.samurai.memory_bank_kf_score_threshold,
        )

    # ---- one object on one frame -------------------------------------------------------------

    def _run_single_frame_inference(
        self,
        inference_state,
        output_dict,
        frame_idx,
        batch_size,
        is_init_cond_frame,
        point_inputs,
        mask_inputs,
        reverse,
        run_mem_encoder,
        prev_sam_mask_logits=None,
    ):
        """SAM 2's step on one object and frame. On a tracked frame (no prompt) the SAMURAI
        hooks get the motion state of ``(obj_id, reverse)``; the frame's output keeps the kept
        mask's scores (:data:`IOU_SCORE_KEY`, :data:`KF_SCORE_KEY`: ``[1] float32``; a prompted
        frame is trusted, IoU 1 and no motion score, NaN).

        Returns:
            SAM 2's ``(compact output, pred_masks [1, 1, S/4, S/4])``.
        """
        motion = None
        if point_inputs is None and mask_inputs is None:
            obj_idx = _obj_idx_of_output_dict(inference_state, output_dict)
            obj_id = inference_state["obj_idx_to_id"][obj_idx]
            motion = self.samurai_state(inference_state).motion(obj_id, reverse)
        step = self._step = SamuraiStep(motion)
        try:
            current_out, pred_masks = super()._run_single_frame_inference(
                inference_state=inference_state,
                output_dict=output_dict,
                frame_idx=frame_idx,
                batch_size=batch_size,
                is_init_cond_frame=is_init_cond_frame,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                reverse=reverse,
                run_mem_encoder=run_mem_encoder,
                prev_sam_mask_logits=prev_sam_mask_logits,
            )
        finally:
            self._step = None
        if motion is None:
            current_out[IOU_SCORE_KEY] = torch.ones(1)
            current_out[KF_SCORE_KEY] = torch.full((1,), math.nan)
        else:
            if step.choice is None:
                raise RuntimeError(f"frame {frame_idx}: SAM 2's step made no mask choice")
            kf_score = step.choice.kf_score
            current_out[IOU_SCORE_KEY] = torch.tensor([step.choice.iou_score], dtype=torch.float32)
            current_out[KF_SCORE_KEY] = torch.tensor(
                [math.nan if kf_score is None else kf_score], dtype=torch.float32
            )
        return current_out, pred_masks

    # ---- memory: motion-aware selection ------------------------------------------------------

    # Replaced on tracked frames (not wrapped): SAM 2 reads the spatial memories and the object
    # pointers from the same per-frame outputs, by distance, so no input can make it select
    # other memory frames while keeping its pointers.
    def _prepare_memory_conditioned_features(
        self,
        frame_idx,
        is_init_cond_frame,
        current_vision_feats,
        current_vision_pos_embeds,
        feat_sizes,
        output_dict,
        num_frames,
        track_in_reverse=False,
    ):
        """On a tracked frame, the frame's top-level features after SAM 2's memory attention
        over SAMURAI's memory: the closest prompted frames (temporal position 0), the past frames
        of :meth:`_samurai_memory_frames`, and SAM 2's object pointers. Elsewhere SAM 2's.

        Args:
            frame_idx: the frame being tracked; ``track_in_reverse``: towards frame 0.
            current_vision_feats: its top-level features ``[H * W, 1, C]`` (one element), with
                ``current_vision_pos_embeds`` and ``feat_sizes`` ``[(H, W)]``.
            output_dict: the object's ``{"cond_frame_outputs", "non_cond_frame_outputs"}``.
            num_frames: the video's length (bounds the object-pointer search).
        Returns:
            ``[1, C, H, W]`` features.
        """
        step = self._step
        if is_init_cond_frame or step is None or step.motion is None:
            return super()._prepare_memory_conditioned_features(
                frame_idx,
                is_init_cond_frame,
                current_vision_feats,
                current_vision_pos_embeds,
                feat_sizes,
                output_dict,
                num_frames,
                track_in_reverse,
            )
        vision_feats = current_vision_feats[-1:]  # the memory attention sees the top level only
        vision_pos = current_vision_pos_embeds[-1:]
        batch, device = vision_feats[-1].size(1), vision_feats[-1].device
        height, width = feat_sizes[-1]
        if not output_dict["cond_frame_outputs"]:
            raise RuntimeError(f"frame {frame_idx}: tracking without a prompted frame")
        selected_cond, unselected_cond = select_closest_cond_frames(
            frame_idx, output_dict["cond_frame_outputs"], self.max_cond_frames_in_attn
        )
        slots = [(0, out) for out in selected_cond.values()]
        slots += self._samurai_memory_frames(
            frame_idx, track_in_reverse, output_dict["non_cond_frame_outputs"], unselected_cond
        )
        memory, memory_pos = [], []
        for t_pos, out in slots:
            if out is None:  # the previous frame has no tracked output (e.g. it was prompted)
                continue
            features = out["maskmem_features"].to(device, non_blocking=True)
            memory.append(features.flatten(2).permute(2, 0, 1))
            encoding = out["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            memory_pos.append(encoding + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])
        num_obj_ptr_tokens = 0
        if self.use_obj_ptrs_in_encoder:
            pointers = self._object_pointer_tokens(
                frame_idx,
                track_in_reverse,
                output_dict["non_cond_frame_outputs"],
                selected_cond,
                unselected_cond,
                num_frames=num_frames,
                device=device,
            )
            if pointers is not None:
                memory.append(pointers[0])
                memory_pos.append(pointers[1])
                num_obj_ptr_tokens = pointers[0].shape[0]
        fused = self.memory_attention(
            curr=vision_feats,
            curr_pos=vision_pos,
            memory=torch.cat(memory, dim=0),
            memory_pos=torch.cat(memory_pos, dim=0),
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return fused.permute(1, 2, 0).view(batch, self.hidden_dim, height, width)

    def _samurai_memory_frames(
        self,
        frame_idx: int,
        reverse: bool,
        non_cond_outputs: dict[int, dict[str, Any]],
        unselected_cond_outputs: dict[int, dict[str, Any]],
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """SAMURAI's spatial memory: the previous frame plus the most recent admitted past frames
        (:func:`select_memory_frames`); ``memory_temporal_stride_for_eval`` is not used.

        Args:
            frame_idx: the frame being tracked; ``reverse``: "past" means later frames.
            non_cond_outputs: the object's tracked outputs (frame index -> output).
            unselected_cond_outputs: its prompted frames beyond ``max_cond_frames_in_attn``,
                which count as past frames.
        Returns:
            ``(t_pos, output or None)`` oldest first, ``t_pos`` in ``1 .. num_maskmem - 1`` picking
            SAM 2's temporal encoding (``num_maskmem - 1``: the previous frame).
        """
        step = 1 if reverse else -1

        def lookup(t: int) -> dict[str, Any] | None:
            out = non_cond_outputs.get(t)
            return out if out is not None else unselected_cond_outputs.get(t)

        def candidates() -> Iterator[MemoryCandidate]:
            past = [
                t
                for t in {*non_cond_outputs, *unselected_cond_outputs}
                if (t - frame_idx) * step > 0
            ]
            for t in sorted(past, key=lambda t: abs(t - frame_idx)):
                yield memory_candidate(t, lookup(t))

        num_slots = self.num_maskmem - 1
        frames = select_memory_frames(
            candidates(),
            previous_frame_idx=frame_idx + step,
            num_slots=num_slots,
            max_admitted=self.max_obj_ptrs_in_encoder - 1,
            iou_threshold=self.samurai.memory_bank_iou_threshold,
            obj_score_threshold=self.samurai.memory_bank_obj_score_threshold,
            kf_score_threshold=self.samurai.memory_bank_kf_score_threshold,
        )
        # oldest first, as SAM 2 orders them
        return [(num_slots - rank, lookup(t)) for rank, t in reversed(list(enumerate(frames)))]

    def _object_pointer_tokens(
        self,
        frame_idx: int,
        reverse: bool,
        non_cond_outputs: dict[int, dict[str, Any]],
        selected_cond_outputs: dict[int, dict[str, Any]],
        unselected_cond_outputs: dict[int, dict[str, Any]],
        *,
        num_frames: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """SAM 2's object-pointer memory, unchanged by SAMURAI: the selected prompted frames'
        pointers and those of up to ``max_obj_ptrs_in_encoder - 1`` frames just before this one
        (the part of SAM 2's ``_prepare_memory_conditioned_features`` that SAMURAI keeps).

        Returns:
            ``(pointers [P, 1, mem_dim], temporal encodings [P, 1, mem_dim])`` on ``device``, or
            None if there are none.
        """
        channels, batch = self.hidden_dim, 1
        max_pointers = min(num_frames, self.max_obj_ptrs_in_encoder)
        cond_outputs = selected_cond_outputs
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            cond_outputs = {
                t: out
                for t, out in selected_cond_outputs.items()
                if (t >= frame_idx if reverse else t <= frame_idx)
            }
        sign = -1 if reverse else 1
        positions_and_pointers = [
            (
                (frame_idx - t) * sign
                if self.use_signed_tpos_enc_to_obj_ptrs
                else abs(frame_idx - t),
                out["obj_ptr"],
            )
            for t, out in cond_outputs.items()
        ]
        for distance in range(1, max_pointers):
            t = frame_idx + distance if reverse else frame_idx - distance
            if t < 0 or t >= num_frames:
                break
            out = non_cond_outputs.get(t, unselected_cond_outputs.get(t))
            if out is not None:
                positions_and_pointers.append((distance, out["obj_ptr"]))
        if not positions_and_pointers:
            return None
        positions, pointer_list = zip(*positions_and_pointers, strict=True)
        pointers = torch.stack(pointer_list, dim=0)  # [P, 1, C]
        if self.add_tpos_enc_to_obj_ptrs:
            encoding_dim = channels if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            distances = torch.tensor(positions).to(device=device, non_blocking=True)
            # sine encoding of the distance, relative to the farthest pointer SAM 2 can take
            encodings = get_1d_sine_pe(distances / (max_pointers - 1), dim=encoding_dim)
            encodings = self.obj_ptr_tpos_proj(encodings)
            encodings = encodings.unsqueeze(1).expand(-1, batch, self.mem_dim)
        else:
            encodings = pointers.new_zeros(len(positions), batch, self.mem_dim)
        if self.mem_dim < channels:
            # each pointer becomes channels // mem_dim tokens
            pointers = pointers.reshape(-1, batch, channels // self.mem_dim, self.mem_dim)
            pointers = pointers.permute(0, 2, 1, 3).flatten(0, 1)
            encodings = encodings.repeat_interleave(channels // self.mem_dim, dim=0)
        return pointers, encodings

    # ---- SAM head: motion-aware mask choice --------------------------------------------------

    # Replaced (not wrapped): SAMURAI changes two decisions inside SAM 2's SAM head, the presence
    # threshold (0 there) and the candidate kept (the highest predicted IoU there, which also
    # makes the object pointer); a wrapper only sees the head's outputs, after both.
    def _forward_sam_heads(
        self,
        backbone_features,
        point_inputs=None,
        mask_inputs=None,
        high_res_features=None,
        multimask_output=False,
    ):
        """SAM 2's SAM head (same inputs and outputs) with SAMURAI's presence threshold
        (``min_obj_score_logits``, as the published code applies it on every frame) and, on a
        tracked frame, the motion-aware choice among multimask candidates with the object's
        motion state (elsewhere the highest predicted IoU, as SAM 2): :meth:`_samurai_decode`.
        """
        step = self._step
        decoded = self._samurai_decode(
            backbone_features,
            high_res_features,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            multimask_output=multimask_output,
            motion=None if step is None else step.motion,
        )
        if step is not None:
            step.choice = decoded.choice
        return (
            decoded.low_res_multimasks,
            decoded.high_res_multimasks,
            decoded.ious,
            decoded.low_res_masks,
            decoded.high_res_masks,
            decoded.obj_ptr,
            decoded.object_score_logits,
        )

    def _samurai_decode(
        self,
        pix_feat: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        *,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool,
        motion: ObjectMotion | None,
    ) -> SamuraiDecoding:
        """SAM 2's prompt encoder and mask decoder with SAMURAI's presence threshold and, among
        multimask candidates, the motion-aware choice.

        Args:
            pix_feat: ``[B, C, H, W]`` (memory-conditioned) features.
            high_res_features: ``[B, C_l, H_l, W_l]`` per higher-resolution level, or None.
            point_inputs: clicks (``point_coords [B, P, 2]``, ``point_labels [B, P]``) or None.
            mask_inputs: ``[B, 1, h, w]`` mask prompt or None.
            multimask_output: decode three candidates (else one, which is kept).
            motion: the object's motion state for this direction (``B`` must be 1), advanced by
                one frame when there are candidates to choose from; None: the highest predicted
                IoU, as SAM 2.
        """
        batch, device = pix_feat.size(0), pix_feat.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # no clicks: one padding point with label -1, as SAM 2 pads
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        mask_prompt = mask_inputs
        if (
            mask_inputs is not None
            and mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size
        ):
            mask_prompt = F.interpolate(
                mask_inputs.float(),
                size=self.sam_prompt_encoder.mask_input_size,
                align_corners=False,
                mode="bilinear",
                antialias=True,  # as SAM 2: a smoother downsampling
            )
        sparse, dense = self.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=mask_prompt
        )
        low_res_multimasks, ious, output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        is_obj_appearing = None
        if self.pred_obj_scores:
            is_obj_appearing = object_score_logits > self.samurai.min_obj_score_logits
            # masks of absent objects are hard-set to "no object", as in SAM 2
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )
        low_res_multimasks = low_res_multimasks.float()  # [B, K, S/4, S/4]
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        rows = torch.arange(batch, device=device)
        output_token = output_tokens[:, 0]
        choice = None
        if multimask_output:
            if motion is None:
                kept = torch.argmax(ious, dim=-1)
            else:
                boxes, valid = mask_boxes(high_res_multimasks[0])
                choice = motion.choose(ious[0].detach().float().cpu().numpy(), boxes, valid)
                kept = torch.tensor([choice.index], device=device)
            low_res_masks = low_res_multimasks[rows, kept].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, kept].unsqueeze(1)
            if output_tokens.size(1) > 1:
                output_token = output_tokens[rows, kept]
        else:
            kept = torch.zeros_like(rows)
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
        if choice is None:
            choice = CandidateChoice(int(kept[0]), float(ious[0, int(kept[0])]))
        obj_ptr = self._object_pointer(output_token, object_score_logits, is_obj_appearing)
        return SamuraiDecoding(
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
            choice,
        )

    def _object_pointer(
        self,
        output_token: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_obj_appearing: torch.Tensor | None,
    ) -> torch.Tensor:
        """Object pointer ``[1, C]`` from the kept output token ``[1, C]``, as in SAM 2 (an
        absent object's pointer leans towards the learnt "no object" pointer)."""
        obj_ptr = self.obj_ptr_proj(output_token)
        if not self.pred_obj_scores:
            return obj_ptr
        if self.soft_no_obj_ptr:
            presence = object_score_logits.sigmoid()
        else:
            presence = is_obj_appearing.float()
        if self.fixed_no_obj_ptr:
            obj_ptr = presence * obj_ptr
        return obj_ptr + (1 - presence) * self.no_obj_ptr
