"""The per-expression reference: SAM 2's own predictor, used the way ReferDINO-Plus uses it.

For each expression ReferDINO-Plus calls ``init_state(video_path)`` (decoding the video and
encoding frames again), adds one prompt per kept query and propagates forward, then in reverse.
:func:`reference_refine` does exactly that with SAM 2's unmodified
:class:`~sam2.sam2_video_predictor.SAM2VideoPredictor`, built by SAM 2's own
``build_sam2_video_predictor``. It is the oracle that
:class:`~stage2_sam2_refine.refine.Refiner` is checked and timed against (tests, and benchmarks
that put ``tests/`` on their path); the packages do not ship it.

Off CUDA, SAM 2's predictor cannot run as released: it stores memory features in bfloat16, which
its float32 CPU memory attention rejects. :class:`Float32MemoryPredictor` changes only that, by
putting the float32 memory the encoder produced back in place of the bfloat16 copy.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from rvos.masks import RunLengthMasks
from rvos.options import autocast_to_dtype
from stage2_sam2_refine.build import class_path, sam2_config_location, sam2_hydra
from stage2_sam2_refine.options import Stage2Options
from stage2_sam2_refine.prompts import (
    boxes_to_pixel_xyxy,
    prompt_frames,
    sample_points_from_mask,
    select_queries,
)
from stage2_sam2_refine.refine import RefineResult


class Float32MemoryPredictor(SAM2VideoPredictor):
    """SAM 2's predictor with memory features kept in float32 off CUDA (nothing else changed)."""

    _float32_memory: torch.Tensor | None = None

    def _encode_new_memory(self, *args, **kwargs):
        features, pos_enc = super()._encode_new_memory(*args, **kwargs)
        self._float32_memory = features
        return features, pos_enc

    def _float32(self, stored: torch.Tensor) -> torch.Tensor:
        if stored.device.type == "cuda" or self._float32_memory is None:
            return stored
        return self._float32_memory.to(stored.device)

    def _run_single_frame_inference(self, *args, **kwargs):
        self._float32_memory = None
        out, pred_masks = super()._run_single_frame_inference(*args, **kwargs)
        if out["maskmem_features"] is not None:
            out["maskmem_features"] = self._float32(out["maskmem_features"])
        return out, pred_masks

    def _run_memory_encoder(self, *args, **kwargs):
        self._float32_memory = None
        features, pos_enc = super()._run_memory_encoder(*args, **kwargs)
        return self._float32(features), pos_enc


def build_reference_predictor(
    model: str | os.PathLike, checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> SAM2VideoPredictor:
    """SAM 2's predictor from ``sam2.build_sam.build_sam2_video_predictor`` (default options).

    Args:
        model: ``sam2.1_hiera_{t,s,b+,l}`` or a SAM 2 YAML path.
        checkpoint: the SAM 2 checkpoint.
        device: ``cuda`` gives the unmodified class; elsewhere :class:`Float32MemoryPredictor`.
    """
    cls = SAM2VideoPredictor if torch.device(device).type == "cuda" else Float32MemoryPredictor
    overrides = [f"++model._target_={class_path(cls)}"]
    config_dir, config_name = sam2_config_location(model)
    with sam2_hydra(config_dir):
        return build_sam2_video_predictor(
            config_name, os.fspath(checkpoint), device=device, hydra_overrides_extra=overrides
        )


def reference_refine(
    predictor: SAM2VideoPredictor,
    frame_dir: str | os.PathLike,
    *,
    scores: np.ndarray,
    boxes: np.ndarray,
    masks: np.ndarray,
    options: Stage2Options,
) -> RefineResult:
    """One expression, ReferDINO-Plus's way: a fresh ``init_state`` from the frame folder.

    Args:
        predictor: from :func:`build_reference_predictor`.
        frame_dir: the video's JPEG folder (``<frame index>.jpg`` names, as SAM 2 requires).
        scores, boxes, masks: ``[T, N]``, ``[T, N, 4]``, ``[T, N, H, W] bool`` stage-1 proposals.
        options: the same options :class:`~stage2_sam2_refine.refine.Refiner` takes; a query whose
            mask is empty on its prompt frame is prompted with that mask under ``point``.
    """
    num_frames = scores.shape[0]
    height, width = masks.shape[-2:]
    queries = select_queries(scores, options.score_threshold)
    if queries.size == 0:
        return RefineResult.empty(num_frames, height, width)
    frames = prompt_frames(scores, queries)
    rng = np.random.default_rng(options.point_seed)
    autocast = contextlib.nullcontext()
    if predictor.device.type == "cuda" and options.autocast is not None:
        autocast = torch.autocast("cuda", dtype=autocast_to_dtype(options.autocast))
    segments: dict[int, np.ndarray] = {}
    with torch.inference_mode(), autocast:
        state = predictor.init_state(video_path=os.fspath(frame_dir))
        for obj_id, (query, frame_idx) in enumerate(zip(queries, frames, strict=True)):
            mask = np.asarray(masks[frame_idx, query], dtype=bool)
            if options.prompt == "box":
                box = boxes_to_pixel_xyxy(boxes[frame_idx, query], height, width)
                predictor.add_new_points_or_box(state, int(frame_idx), obj_id, box=box)
                continue
            if options.prompt == "point":
                points = sample_points_from_mask(mask, options.num_points, rng)
                if len(points):
                    labels = np.ones(len(points), dtype=np.int32)
                    predictor.add_new_points_or_box(
                        state, int(frame_idx), obj_id, points=points, labels=labels
                    )
                    continue
            predictor.add_new_mask(state, int(frame_idx), obj_id, mask)
        for reverse in (False, True):
            for frame_idx, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                segments[frame_idx] = (logits > 0).squeeze(1).cpu().numpy()
    stacked = np.stack([segments[t] for t in range(num_frames)])
    return RefineResult(masks=RunLengthMasks.encode(stacked), columns=queries, prompt_frames=frames)
