"""Stage 2 of ReferDINO-Plus: refine stage-1 proposals with a video tracker (SAM 2, SAMURAI).

Typical use, one tracker per worker, one session per video, one call per expression
(``options``: the ``stage2`` section of the pipeline configuration, e.g.
``referdino_plus.config.load_config().stage2``; ``options.tracker`` names the tracker)::

    refiner = Refiner(build_tracker(options, device="cuda"), options)
    for exp_id, result in refiner.refine_video(frames, proposals, video_id=video_id):
        ...  # result.masks: [T, K, H, W] as runs (result.masks.frame(t): [K, H, W] bool),
        ...  # result.columns, result.prompt_frames
"""

from rvos.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "stage2_sam2_refine.build": (
            "SAM2_MODEL_CONFIGS",
            "build_sam2_predictor",
            "instantiate_sam2",
            "load_sam2_checkpoint",
            "resolve_sam2_config",
        ),
        "stage2_sam2_refine.options": ("PromptKind", "SamuraiOptions", "Stage2Options", "Tracker"),
        "stage2_sam2_refine.predictor": (
            "SharedFeatureVideoPredictor",
            "VideoSession",
            "load_frames",
        ),
        "stage2_sam2_refine.prompts": (
            "boxes_to_pixel_xyxy",
            "mean_confident_scores",
            "prompt_frames",
            "sample_points_from_mask",
            "select_queries",
        ),
        "stage2_sam2_refine.refine": ("Proposals", "Refiner", "RefineResult"),
        "stage2_sam2_refine.sam2_tracker": ("Sam2Session", "Sam2Tracker"),
        "stage2_sam2_refine.samurai": ("SamuraiVideoPredictor",),
        "stage2_sam2_refine.tracker": (
            "TRACKERS",
            "ObjectPrompt",
            "TrackedFrame",
            "TrackingSession",
            "VideoTracker",
            "build_tracker",
            "propagation_order",
        ),
    },
)
