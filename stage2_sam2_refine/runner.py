"""Stage 2 per video: refine every expression's kept queries with SAM 2.

Reads the video's stage-1 record (or, with ``stage1.legacy_dir``, converts the ReferDINO-Plus
``<video>.npz`` into one first), opens the video once (frames decoded and image features computed
once for all expressions and both propagation directions), and writes the stage-2 record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rvos import intermediates as im
from rvos.masks import RunLengthMasks
from rvos.mevis import DataError, MevisSplit
from stage2_sam2_refine.refine import RefineConfig, Refiner, RefineResult, build_refiner

logger = logging.getLogger(__name__)


def build_stage2_refiner(stage2: dict[str, Any], device: str) -> Refiner:
    """The refiner ``stage2`` describes (model, checkpoint, prompts, tracker) on ``device``."""
    predictor_cls, overrides = None, None
    if stage2["tracker"] == "samurai":
        from stage2_sam2_refine.samurai import (
            SamuraiConfig,
            SamuraiVideoPredictor,
            samurai_model_overrides,
        )

        predictor_cls = SamuraiVideoPredictor
        overrides = samurai_model_overrides(SamuraiConfig(**stage2.get("samurai", {})))
    kwargs = {"predictor_cls": predictor_cls} if predictor_cls else {}
    return build_refiner(
        model=stage2["model"],
        checkpoint=stage2["checkpoint"],
        device=device,
        config=RefineConfig.from_mapping(stage2),
        overrides=overrides,
        **kwargs,
    )


def load_stage1_input(config: dict[str, Any], split: MevisSplit, video_id: str) -> im.Stage1Video:
    """The video's stage-1 record; with ``stage1.legacy_dir``, imported from the legacy file once.

    Raises:
        DataError: the record does not cover the video's frames or expressions.
    """
    work_dir = Path(config["work_dir"])
    fingerprint = config["run"]["fingerprints"]["stage1"]
    path = im.stage_path(work_dir, 1, video_id)
    legacy_dir = config["stage1"].get("legacy_dir")
    video = split.videos[video_id]
    if legacy_dir and not im.is_finished(path, im.STAGE1_KIND, fingerprint):
        from rvos.legacy import read_legacy_npz
        from stage1_referdino.proposals import stage1_from_legacy

        legacy = read_legacy_npz(Path(legacy_dir) / f"{video_id}.npz")
        try:
            record = stage1_from_legacy(
                legacy, video.frame_names, obj_threshold=config["stage1"]["obj_threshold"]
            )
        except ValueError as err:
            raise DataError(str(err)) from None
        im.save_stage1(path, record, fingerprint=fingerprint)
    record = im.load_stage1(path)
    if list(record.frame_names) != list(video.frame_names):
        raise DataError(
            f"video {video_id!r}: the stage-1 record in {path} has {len(record.frame_names)} "
            f"frames, meta_expressions.json lists {video.num_frames}: recompute stage 1"
        )
    missing = [e for e in video.expressions if e not in record.expressions]
    if missing:
        raise DataError(f"video {video_id!r}: stage-1 outputs miss expression(s) {missing}")
    record.expressions = {e: record.expressions[e] for e in video.expressions}
    return record


def refinement_record(proposals: im.ExpressionProposals, result: RefineResult):
    """Stage-2 record of one expression: SAM 2 masks plus the kept queries' stage-1 union."""
    kept = np.asarray(result.query_indices, dtype=np.int64)
    num_frames = proposals.scores.shape[0]
    height, width = proposals.masks.frame_size
    if kept.size:
        stage1_union = proposals.masks.select(kept, axis=1).decode().any(axis=1)
    else:
        stage1_union = np.zeros((num_frames, height, width), dtype=bool)
    return im.ExpressionRefinement(
        kept_queries=kept,
        prompt_frames=np.asarray(result.prompt_frames, dtype=np.int64),
        sam2_masks=RunLengthMasks.encode(result.masks),
        stage1_union=RunLengthMasks.encode(stage1_union),
    )


def build_video_processor(config: dict[str, Any], device: str):
    """Worker entry point (see :mod:`rvos.workers`): SAM 2 loads once, then one call per video."""
    refiner = build_stage2_refiner(config["stage2"], device)
    split = MevisSplit(config["data"]["root"])
    work_dir = Path(config["work_dir"])
    fingerprint = config["run"]["fingerprints"]["stage2"]

    def process(video_id: str) -> None:
        stage1 = load_stage1_input(config, split, video_id)
        output = im.Stage2Video(video_id, stage1.frame_names, stage1.height, stage1.width)
        results = refiner.refine_video(
            split.frame_paths(video_id), stage1.expressions, video_id=video_id
        )
        for exp_id, result in results:
            output.expressions[exp_id] = refinement_record(stage1.expressions[exp_id], result)
        im.save_stage2(im.stage_path(work_dir, 2, video_id), output, fingerprint=fingerprint)

    return process
