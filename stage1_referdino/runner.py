"""Stage 1 per video: ReferDINO on every expression, the backbone run once per video.

The Swin backbone and input projections do not depend on the sentence, so a video's features are
computed once (:meth:`ReferDINO.encode_video`) and every expression runs on them
(:meth:`ReferDINO.infer_features`): bit-identical to running ``infer`` per expression, as the
original inference script does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rvos import intermediates as im
from rvos.legacy import LegacyVideo, write_legacy_npz
from rvos.mevis import MevisSplit
from stage1_referdino.build import load_referdino
from stage1_referdino.model import ReferDINO
from stage1_referdino.proposals import load_stage1_outputs, proposals_from_outputs
from stage1_referdino.transforms import preprocess

logger = logging.getLogger(__name__)


@dataclass
class RawOutputs:
    """ReferDINO's outputs for one expression, on the CPU.

    Attributes:
        scores: ``[T, Q] float32`` sigmoid of the query logits.
        boxes: ``[T, Q, 4] float32`` normalised ``(cx, cy, w, h)``.
        mask_logits: ``[T, Q, h, w] float32`` at stride 4 of the network input.
    """

    scores: np.ndarray
    boxes: np.ndarray
    mask_logits: np.ndarray


def run_expressions(
    model: ReferDINO,
    images: list[Image.Image],
    expressions: Mapping[str, str],
    *,
    short_side: int,
    feature_cache_device: str = "auto",
) -> Iterator[tuple[str, RawOutputs]]:
    """Run ReferDINO on one video for each ``exp_id -> sentence``, encoding the frames once.

    Args:
        images: the video's RGB frames in order.
        short_side: network input size (shorter side).
        feature_cache_device: ``auto`` keeps the backbone features on the model device, ``cpu``
            keeps them in host memory between expressions (long videos on small GPUs).
    Yields:
        ``(exp_id, RawOutputs)`` in the order of ``expressions``.
    """
    video = preprocess(images, short_side=short_side)
    storage = "cpu" if feature_cache_device == "cpu" else None
    features = model.encode_video(video, storage_device=storage)
    for exp_id, sentence in expressions.items():
        out = model.infer_features(features, sentence)
        yield (
            exp_id,
            RawOutputs(
                scores=out["pred_logits"][..., 0].sigmoid().cpu().numpy(),
                boxes=out["pred_boxes"].cpu().numpy(),
                mask_logits=out["pred_masks"].cpu().numpy(),
            ),
        )


def build_stage1_model(stage1: Mapping[str, Any], device: str) -> ReferDINO:
    """ReferDINO as ``stage1`` configures it (model, checkpoint, text encoder, autocast)."""
    return load_referdino(
        stage1["model"],
        stage1["checkpoint"],
        text_encoder=stage1.get("text_encoder"),
        device=device,
        autocast=stage1.get("autocast"),
    )


def stage1_record(
    model: ReferDINO,
    images: list[Image.Image],
    sentences: Mapping[str, str],
    stage1: Mapping[str, Any],
    *,
    video_id: str,
    frame_names: list[str],
    legacy: LegacyVideo | None = None,
    progress: bool = False,
) -> im.Stage1Video:
    """Stage-1 record of one video: ReferDINO on every sentence, the frames encoded once.

    Args:
        images: the video's RGB frames, in the order of ``frame_names``.
        sentences: ``exp_id -> sentence``.
        stage1: the ``stage1`` config section (``short_side``, ``top_k``, ``obj_threshold``,
            ``feature_cache_device``).
        legacy: if given, each expression's raw outputs are added to it (legacy export).
        progress: show a progress bar over the sentences.
    Returns:
        per sentence, the top queries' ``[T, K]`` scores, ``[T, K, 4]`` boxes and
        ``[T, K, H, W]`` masks at frame size, and ReferDINO's own answer.
    """
    height, width = images[0].height, images[0].width
    record = im.Stage1Video(video_id, list(frame_names), height, width)
    with torch.inference_mode():
        outputs = run_expressions(
            model,
            images,
            sentences,
            short_side=stage1["short_side"],
            feature_cache_device=stage1["feature_cache_device"],
        )
        if progress:
            outputs = tqdm(
                outputs, total=len(sentences), desc="stage 1 (ReferDINO)", unit="sentence"
            )
        for exp_id, raw in outputs:
            record.expressions[exp_id] = proposals_from_outputs(
                raw.scores,
                raw.boxes,
                raw.mask_logits,
                (height, width),
                top_k=stage1["top_k"],
                obj_threshold=stage1["obj_threshold"],
            )
            if legacy is not None:
                legacy.expressions[exp_id] = {
                    "scores": raw.scores,
                    "boxes": raw.boxes,
                    "masks": raw.mask_logits,
                }
    return record


def build_video_processor(config: dict[str, Any], device: str):
    """Worker entry point (see :mod:`rvos.workers`): the model loads once, then one call per video.

    With ``stage1.legacy_dir`` no model runs: each video's ReferDINO-Plus file is imported.
    """
    stage1 = config["stage1"]
    split = MevisSplit(config["data"]["root"])
    work_dir = Path(config["work_dir"])
    fingerprint = config["run"]["fingerprints"]["stage1"]
    if stage1.get("legacy_dir"):
        return lambda video_id: load_stage1_outputs(config, split, video_id)

    model = build_stage1_model(stage1, device)

    def process(video_id: str) -> None:
        entry = split.videos[video_id]
        images = split.load_frames(video_id)
        legacy = None
        if stage1["export_legacy"]:
            size = (images[0].height, images[0].width)
            legacy = LegacyVideo(video_id, str(split.frame_dir(video_id)), size)
        sentences = {exp_id: e.text for exp_id, e in entry.expressions.items()}
        run = functools.partial(
            stage1_record,
            model,
            images,
            sentences,
            video_id=video_id,
            frame_names=list(entry.frame_names),
            legacy=legacy,
        )
        try:
            record = run(stage1)
        except torch.OutOfMemoryError:
            if stage1["feature_cache_device"] == "cpu":
                raise
            record = None  # free the failed attempt before retrying
        if record is None:
            torch.cuda.empty_cache()
            logger.warning(
                "video %s: CUDA out of memory; retrying with the backbone features in host memory "
                "(stage1.feature_cache_device=cpu)",
                video_id,
            )
            record = run({**stage1, "feature_cache_device": "cpu"})
        if legacy is not None:
            write_legacy_npz(work_dir / "legacy_stage1" / f"{video_id}.npz", legacy)
        im.save_stage1(im.stage_path(work_dir, 1, video_id), record, fingerprint=fingerprint)

    return process
