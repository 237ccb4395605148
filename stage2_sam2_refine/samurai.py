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

Unlike the published code (one filter on the model object, shared by every object, expression
and direction), the motion state here belongs to one object and one propagation direction of one
inference state: key ``(obj_id, reverse)`` in :class:`SamuraiState`, stored in the inference
state, cleared by ``reset_state`` and at the start of every ``propagate_in_video`` pass.

Differences from the published code, all deliberate:

- an empty chosen mask is not a measurement: the filter is not initiated or updated with a
  ``[0, 0, 0, 0]`` box, and the track counts as unstable (``stable_frames = 0``);
- memory candidates are every past frame in the tracking direction that has an output (the
  published loop skips frames 0 and 1, only looks backwards in time and fails on a missing frame),
  so prompts in mid-video and the reverse pass work;
- a mask-prompted frame is recorded with IoU 1 and no motion score (published: 1 and 1; the same
  for any ``memory_bank_kf_score_threshold`` below 1);
- ``memory_temporal_stride_for_eval`` is ignored, as in SAMURAI mode of the published code.

Selecting it: ``build_sam2_predictor(model, checkpoint, predictor_cls=SamuraiVideoPredictor,
overrides=samurai_model_overrides(SamuraiConfig(...)))`` (:mod:`stage2_sam2_refine.build`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from stage2_sam2_refine.kalman import KalmanBoxFilter, KalmanNoise
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor

logger = logging.getLogger(__name__)

STATE_KEY = "samurai"  # where the SamuraiState lives in a SAM 2 inference state
IOU_SCORE_KEY = "best_iou_score"  # per-frame output: predicted IoU of the kept mask, [B] float32
KF_SCORE_KEY = "kf_score"  # per-frame output: IoU with the Kalman box, [B] float32, NaN if unused


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamuraiConfig:
    """SAMURAI hyper-parameters. Sources: ``sam2/configs/samurai/sam2.1_hiera_*.yaml`` of
    ``yangchris11/samurai`` and ``sam2/configs/sam2.1/sam2.1_hiera_l.yaml`` of ReferDINO-Plus."""

    # 0.25: weight of the Kalman-box IoU in the candidate score; ReferDINO-Plus sam2.1_hiera_l
    # and SAMURAI sam2.1_hiera_{t,s,b+} (SAMURAI's own sam2.1_hiera_l uses 0.15)
    kf_score_weight: float = 0.25
    # 15: frames of trusted measurements before the motion score takes part (SAMURAI configs)
    stable_frames_threshold: int = 15
    # 0.3: predicted IoU a kept mask needs to update the filter (SAMURAI configs)
    stable_ious_threshold: float = 0.3
    # -1: object-score logit above which the object counts as present (SAMURAI configs; SAM 2: 0)
    min_obj_score_logits: float = -1.0
    # 0.5: predicted IoU a past frame needs to enter the memory (SAMURAI memory_bank_iou_threshold)
    memory_bank_iou_threshold: float = 0.5
    # 0.0: object-score logit a past frame needs to enter the memory (SAMURAI configs)
    memory_bank_obj_score_threshold: float = 0.0
    # 0.0: Kalman-box IoU a past frame needs to enter the memory, when it has one (SAMURAI configs)
    memory_bank_kf_score_threshold: float = 0.0
    # Kalman noise model (SAMURAI kalman_filter.py values)
    kalman: KalmanNoise = field(default_factory=KalmanNoise)


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

    def __init__(self, config: SamuraiConfig) -> None:
        self.config = config
        self.filter = KalmanBoxFilter(config.kalman)
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

    def __init__(self, config: SamuraiConfig) -> None:
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


def samurai_model_overrides(config: SamuraiConfig | None = None) -> dict[str, Any]:
    """``model.<key>`` settings that make a SAM 2 YAML build a :class:`SamuraiVideoPredictor`
    with ``config`` (for :func:`stage2_sam2_refine.build.build_sam2_predictor`'s ``overrides``).

    Besides SAMURAI's own hyper-parameters they turn on the multimask outputs SAMURAI chooses from
    on every tracked frame: ``multimask_output_in_sam``, ``multimask_output_for_tracking`` and
    ``multimask_min_pt_num=0`` (tracked frames have no points). SAM 2.1 configs already set the
    three; ``use_multimask_token_for_obj_ptr`` is left as configured (true in SAM 2.1).
    """
    config = config if config is not None else SamuraiConfig()
    return {
        "multimask_output_in_sam": True,
        "multimask_output_for_tracking": True,
        "multimask_min_pt_num": 0,
        "kf_score_weight": config.kf_score_weight,
        "stable_frames_threshold": config.stable_frames_threshold,
        "stable_ious_threshold": config.stable_ious_threshold,
        "min_obj_score_logits": config.min_obj_score_logits,
        "memory_bank_iou_threshold": config.memory_bank_iou_threshold,
        "memory_bank_obj_score_threshold": config.memory_bank_obj_score_threshold,
        "memory_bank_kf_score_threshold": config.memory_bank_kf_score_threshold,
    }


@dataclass
class _FrameStep:
    """The object and frame being tracked: its motion state (None when unknown) and, once the
    SAM head has run, the scores of the kept mask."""

    motion: ObjectMotion | None
    iou_score: torch.Tensor | None = None  # [B] float32
    kf_score: torch.Tensor | None = None  # [B] float32, NaN where not computed


class SamuraiVideoPredictor(SharedFeatureVideoPredictor):
    """:class:`SharedFeatureVideoPredictor` with SAMURAI tracking (``stage2.tracker=samurai``).

    Build it with ``build_sam2_predictor(model, checkpoint, predictor_cls=SamuraiVideoPredictor,
    overrides=samurai_model_overrides(config))``. It overrides the SAM head (motion-aware mask
    choice), the per-frame tracking hook (which object and direction is tracked; the kept mask's
    scores stored with the frame), the memory-selection hook and the state resets.

    On construction it also turns on ``multimask_output_in_sam``,
    ``multimask_output_for_tracking`` and ``multimask_min_pt_num=0`` if the YAML did not (see
    :func:`samurai_model_overrides`).
    """

    def __init__(
        self,
        *,
        # weight of the Kalman-box IoU in the candidate score (SamuraiConfig)
        kf_score_weight: float = SamuraiConfig.kf_score_weight,
        # trusted frames before the motion score takes part (SamuraiConfig)
        stable_frames_threshold: int = SamuraiConfig.stable_frames_threshold,
        # predicted IoU a kept mask needs to update the filter (SamuraiConfig)
        stable_ious_threshold: float = SamuraiConfig.stable_ious_threshold,
        # object-score logit above which the object is present (SamuraiConfig)
        min_obj_score_logits: float = SamuraiConfig.min_obj_score_logits,
        # predicted IoU a past frame needs to enter the memory (SamuraiConfig)
        memory_bank_iou_threshold: float = SamuraiConfig.memory_bank_iou_threshold,
        # object-score logit a past frame needs to enter the memory (SamuraiConfig)
        memory_bank_obj_score_threshold: float = SamuraiConfig.memory_bank_obj_score_threshold,
        # Kalman-box IoU a past frame needs to enter the memory (SamuraiConfig)
        memory_bank_kf_score_threshold: float = SamuraiConfig.memory_bank_kf_score_threshold,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.samurai = SamuraiConfig(
            kf_score_weight=kf_score_weight,
            stable_frames_threshold=stable_frames_threshold,
            stable_ious_threshold=stable_ious_threshold,
            min_obj_score_logits=min_obj_score_logits,
            memory_bank_iou_threshold=memory_bank_iou_threshold,
            memory_bank_obj_score_threshold=memory_bank_obj_score_threshold,
            memory_bank_kf_score_threshold=memory_bank_kf_score_threshold,
        )
        self._frame_step: _FrameStep | None = None
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
        super()._reset_tracking_results(inference_state)
        self.samurai_state(inference_state).reset()

    def remove_object(self, inference_state, obj_id, strict=False, need_output=True):
        self.samurai_state(inference_state).drop_object(obj_id)
        return super().remove_object(
            inference_state, obj_id, strict=strict, need_output=need_output
        )

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state,
        start_frame_idx=None,
        max_frame_num_to_track=None,
        reverse=False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """SAM 2's ``propagate_in_video``; every pass starts with fresh motion states for its
        direction, so the reverse pass never sees the forward pass's filters."""
        self.samurai_state(inference_state).reset(reverse=reverse)
        yield from super().propagate_in_video(
            inference_state,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )

    def _track_frame(self, inference_state: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Track one object on one frame with its own motion state (key ``(obj_id, reverse)``);
        the kept mask's predicted IoU and Kalman IoU are added to the output."""
        obj_idx = kwargs["obj_idx"]
        motion = None
        if obj_idx is not None:
            obj_id = inference_state["obj_idx_to_id"][obj_idx]
            motion = self.samurai_state(inference_state).motion(obj_id, kwargs["reverse"])
        self._frame_step = _FrameStep(motion=motion)
        try:
            current_out = super()._track_frame(inference_state, **kwargs)
            step = self._frame_step
        finally:
            self._frame_step = None
        if step.iou_score is not None:
            current_out[IOU_SCORE_KEY] = step.iou_score
            current_out[KF_SCORE_KEY] = step.kf_score
        return current_out

    def _extra_frame_outputs(self, current_out: dict[str, Any]) -> dict[str, Any]:
        """Keep the kept mask's scores with the frame, for the memory selection."""
        extra = super()._extra_frame_outputs(current_out)
        for key in (IOU_SCORE_KEY, KF_SCORE_KEY):
            if key in current_out:
                extra[key] = current_out[key]
        return extra

    def _record_scores(self, iou_score: torch.Tensor, kf_score: Sequence[float | None]) -> None:
        """Remember the kept masks' scores (``[B]``) of the frame being tracked."""
        if self._frame_step is None:
            return
        self._frame_step.iou_score = iou_score.detach().float().cpu()
        values = [math.nan if s is None else s for s in kf_score]
        self._frame_step.kf_score = torch.tensor(values, dtype=torch.float32)

    # ---- SAM head: motion-aware mask choice --------------------------------------------------

    def _use_mask_as_output(self, backbone_features, high_res_features, mask_inputs):
        outputs = super()._use_mask_as_output(backbone_features, high_res_features, mask_inputs)
        # a mask prompt is taken as ground truth: IoU 1 and no motion score
        batch = mask_inputs.size(0)
        self._record_scores(torch.ones(batch), [None] * batch)
        return outputs

    def _forward_sam_heads(
        self,
        backbone_features,
        point_inputs=None,
        mask_inputs=None,
        high_res_features=None,
        multimask_output=False,
    ):
        """SAM 2's prompt encoder + mask decoder (inputs and outputs as ``SAM2Base``'s), with
        SAMURAI's presence threshold and, for multimask outputs, the motion-aware choice."""
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self._decode_masks(
            backbone_features, point_inputs, mask_inputs, high_res_features, multimask_output
        )
        is_obj_appearing = None
        if self.pred_obj_scores:
            is_obj_appearing = object_score_logits > self.samurai.min_obj_score_logits
            # masks of absent objects are hard-set to "no object", as in SAM 2
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        batch_inds = torch.arange(low_res_multimasks.size(0), device=low_res_multimasks.device)
        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:
            best, kf_score = self._choose_candidates(high_res_multimasks, ious)
            low_res_masks = low_res_multimasks[batch_inds, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[batch_inds, best].unsqueeze(1)
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[batch_inds, best]
        else:
            best, kf_score = torch.zeros_like(batch_inds), [None] * len(batch_inds)
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
        self._record_scores(ious[batch_inds, best], kf_score)
        obj_ptr = self._object_pointer(sam_output_token, object_score_logits, is_obj_appearing)
        return (
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    def _decode_masks(
        self, backbone_features, point_inputs, mask_inputs, high_res_features, multimask_output
    ):
        """Prompt encoder + mask decoder, as in ``SAM2Base._forward_sam_heads``.

        Returns mask logits ``[B, K, 4h, 4w]``, predicted IoUs ``[B, K]``, output tokens
        ``[B, K', C]`` and object-score logits ``[B, 1]`` (``K`` = 3 with multimask, else 1).
        """
        batch, device = backbone_features.size(0), backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # one padding point with label -1
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        mask_prompt = None
        if mask_inputs is not None:
            mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    align_corners=False,
                    mode="bilinear",
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=mask_prompt
        )
        return self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )

    def _choose_candidates(
        self, high_res_multimasks: torch.Tensor, ious: torch.Tensor
    ) -> tuple[torch.Tensor, list[float | None]]:
        """Kept candidate per batch row, ``[B]`` long, and its Kalman IoU (or None).

        SAM 2 tracks one object per call; a batch of several rows (or a call outside
        :meth:`_track_frame`) has no per-row motion state and keeps the highest predicted IoU,
        like SAM 2, rather than sharing one object's filter.
        """
        step = self._frame_step
        motion = step.motion if step is not None and ious.size(0) == 1 else None
        if motion is None:
            return torch.argmax(ious, dim=-1), [None] * ious.size(0)
        boxes, valid = mask_boxes(high_res_multimasks[0])
        choice = motion.choose(ious[0].detach().float().cpu().numpy(), boxes, valid)
        return torch.tensor([choice.index], device=ious.device), [choice.kf_score]

    def _object_pointer(self, sam_output_token, object_score_logits, is_obj_appearing):
        """Object pointer ``[B, C]`` from the kept output token, as in SAM 2."""
        obj_ptr = self.obj_ptr_proj(sam_output_token)
        if not self.pred_obj_scores:
            return obj_ptr
        if self.soft_no_obj_ptr:
            lambda_is_obj_appearing = object_score_logits.sigmoid()
        else:
            lambda_is_obj_appearing = is_obj_appearing.float()
        if self.fixed_no_obj_ptr:
            obj_ptr = lambda_is_obj_appearing * obj_ptr
        return obj_ptr + (1 - lambda_is_obj_appearing) * self.no_obj_ptr

    # ---- memory: motion-aware selection ------------------------------------------------------

    def _select_memory_frames(
        self,
        *,
        frame_idx: int,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        unselected_cond_outputs: dict[int, dict[str, Any]],
        track_in_reverse: bool,
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """SAMURAI's memory: the previous frame plus the most recent admitted past frames
        (:func:`select_memory_frames`), as ``(t_pos, output)`` with ``num_maskmem - 1`` for the
        previous frame; ``memory_temporal_stride_for_eval`` is not used."""
        non_cond = output_dict["non_cond_frame_outputs"]
        step = 1 if track_in_reverse else -1

        def lookup(t: int) -> dict[str, Any] | None:
            out = non_cond.get(t)
            return out if out is not None else unselected_cond_outputs.get(t)

        def candidates() -> Iterator[MemoryCandidate]:
            past = [t for t in {*non_cond, *unselected_cond_outputs} if (t - frame_idx) * step > 0]
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
