"""Stage 2 of ReferDINO-Plus: refine stage-1 proposals with a video tracker (SAM 2, SAMURAI).

Typical use, one tracker per worker, one session per video, one call per expression
(``options``: the ``stage2`` section of the pipeline configuration, e.g.
``referdino_plus.config.load_config().stage2``; ``options.tracker`` names the tracker)::

    refiner = Refiner(build_tracker(options, device="cuda"), options)
    for exp_id, result in refiner.refine_video(frames, proposals, video_id=video_id):
        ...  # result.masks: [T, K, H, W] as runs (result.masks.frame(t): [K, H, W] bool),
        ...  # result.columns, result.prompt_frames
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names and the module that defines each. They are imported on first use, so that
# `import stage2_sam2_refine.options` (what the configuration schema needs) stays light.
_EXPORTS = {
    "SAM2_MODEL_CONFIGS": "stage2_sam2_refine.build",
    "VIDEO_POSTPROCESSING": "stage2_sam2_refine.build",
    "build_sam2_predictor": "stage2_sam2_refine.build",
    "compose_sam2_config": "stage2_sam2_refine.build",
    "load_sam2_checkpoint": "stage2_sam2_refine.build",
    "resolve_sam2_config": "stage2_sam2_refine.build",
    "PromptKind": "stage2_sam2_refine.options",
    "SamuraiOptions": "stage2_sam2_refine.options",
    "Stage2Options": "stage2_sam2_refine.options",
    "Tracker": "stage2_sam2_refine.options",
    "SharedFeatureVideoPredictor": "stage2_sam2_refine.predictor",
    "VideoSession": "stage2_sam2_refine.predictor",
    "load_frames": "stage2_sam2_refine.predictor",
    "boxes_to_pixel_xyxy": "stage2_sam2_refine.prompts",
    "mean_confident_scores": "stage2_sam2_refine.prompts",
    "prompt_frames": "stage2_sam2_refine.prompts",
    "sample_points_from_mask": "stage2_sam2_refine.prompts",
    "select_queries": "stage2_sam2_refine.prompts",
    "Proposals": "stage2_sam2_refine.refine",
    "Refiner": "stage2_sam2_refine.refine",
    "RefineResult": "stage2_sam2_refine.refine",
    "Sam2Session": "stage2_sam2_refine.sam2_tracker",
    "Sam2Tracker": "stage2_sam2_refine.sam2_tracker",
    "SamuraiVideoPredictor": "stage2_sam2_refine.samurai",
    "TRACKERS": "stage2_sam2_refine.tracker",
    "ObjectPrompt": "stage2_sam2_refine.tracker",
    "TrackedFrame": "stage2_sam2_refine.tracker",
    "TrackingSession": "stage2_sam2_refine.tracker",
    "VideoTracker": "stage2_sam2_refine.tracker",
    "build_tracker": "stage2_sam2_refine.tracker",
    "propagation_order": "stage2_sam2_refine.tracker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
