"""Stage 2 of ReferDINO-Plus: refine stage-1 proposals with SAM 2 (the ``sam2`` package).

Typical use, one model per worker, one session per video, one call per expression
(``options``: the ``stage2`` section of the pipeline configuration, e.g.
``referdino_plus.config.load_config().stage2``)::

    refiner = build_refiner(options, device="cuda")
    for exp_id, result in refiner.refine_video(frame_paths, proposals, video_id=video_id):
        ...  # result.masks: [T, K, H, W] bool, result.columns, result.prompt_frames
"""

from stage2_sam2_refine.build import (
    SAM2_MODEL_CONFIGS,
    VIDEO_POSTPROCESSING,
    build_sam2_predictor,
    compose_sam2_config,
    load_sam2_checkpoint,
    resolve_sam2_config,
)
from stage2_sam2_refine.options import PromptKind, SamuraiOptions, Stage2Options, Tracker
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor, VideoSession, load_frames
from stage2_sam2_refine.prompts import (
    boxes_to_pixel_xyxy,
    mean_confident_scores,
    prompt_frames,
    sample_points_from_mask,
    select_queries,
)
from stage2_sam2_refine.refine import (
    Proposals,
    Refiner,
    RefineResult,
    build_refiner,
)

__all__ = [
    "SAM2_MODEL_CONFIGS",
    "VIDEO_POSTPROCESSING",
    "PromptKind",
    "Proposals",
    "RefineResult",
    "Refiner",
    "SamuraiOptions",
    "SharedFeatureVideoPredictor",
    "Stage2Options",
    "Tracker",
    "VideoSession",
    "boxes_to_pixel_xyxy",
    "build_refiner",
    "build_sam2_predictor",
    "compose_sam2_config",
    "load_frames",
    "load_sam2_checkpoint",
    "mean_confident_scores",
    "prompt_frames",
    "resolve_sam2_config",
    "sample_points_from_mask",
    "select_queries",
]
