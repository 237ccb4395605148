"""Stage 1 per video: ReferDINO on every expression, the backbone run once per video.

The Swin backbone and input projections do not depend on the sentence, so a video's features are
computed once (:meth:`ReferDINO.encode_video`) and every expression runs on them
(:meth:`ReferDINO.infer_features`): bit-identical to running ``infer`` per expression, as the
original inference script does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rvos import intermediates as im
from rvos.legacy import LegacyVideo, write_legacy_npz
from rvos.options import CacheDevice
from rvos.proposals import (
    THRESHOLD_OR_TOP1,
    Stage1Records,
    answer_logits,
    apply_annotator_argmax,
    proposals_from_outputs,
)
from rvos.splits import Split, Video
from rvos.workers import VideoProcessor
from stage1_referdino.build import load_referdino
from stage1_referdino.model import ReferDINO
from stage1_referdino.model.text_encoder import token_count
from stage1_referdino.options import Stage1Options
from stage1_referdino.transforms import preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage1Job:
    """What a stage-1 worker needs (plain, picklable).

    Attributes:
        data_root: the split.
        layout: its layout (``data.layout``).
        records: where stage-1 records go (and, with ``stage1.legacy_dir``, come from); they
            also name the answer rule (``data.answer``).
        options: the ``stage1`` section.
    """

    data_root: Path
    layout: str
    records: Stage1Records
    options: Stage1Options


@dataclass
class RawOutputs:
    """ReferDINO's outputs for one expression.

    Attributes:
        scores: ``[T, Q] float32`` sigmoid of the query logits, on the CPU.
        boxes: ``[T, Q, 4] float32`` normalised ``(cx, cy, w, h)``, on the CPU.
        mask_logits: ``[T, Q, h, w] float32`` tensor at stride 4 of the network input, on the
            model's device (the record's masks are made there: :func:`proposals_from_outputs`).
    """

    scores: np.ndarray
    boxes: np.ndarray
    mask_logits: torch.Tensor

    def legacy_arrays(self) -> dict[str, np.ndarray]:
        """The ReferDINO-Plus ``.npz`` entry of the expression (scores, boxes, mask logits)."""
        return {
            "scores": self.scores,
            "boxes": self.boxes,
            "masks": self.mask_logits.cpu().numpy(),
        }


def run_expressions(
    model: ReferDINO,
    images: list[Image.Image],
    expressions: Mapping[str, str],
    *,
    short_side: int,
    feature_cache_device: CacheDevice = CacheDevice.auto,
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
    storage = "cpu" if feature_cache_device == CacheDevice.cpu else None
    features = model.encode_video(video, storage_device=storage)
    for exp_id, sentence in expressions.items():
        out = model.infer_features(features, sentence)
        yield (
            exp_id,
            RawOutputs(
                scores=out["pred_logits"][..., 0].sigmoid().cpu().numpy(),
                boxes=out["pred_boxes"].cpu().numpy(),
                mask_logits=out["pred_masks"],
            ),
        )


def warn_dropped_tokens(
    model: ReferDINO, sentences: Mapping[str, str], describe: Callable[[str], str]
) -> dict[str, int]:
    """Warn about each sentence longer than the text encoder reads (``max_text_len`` tokens,
    256 in ReferDINO): the tokens past it are dropped, as in ReferDINO, so the model never sees
    the end of the sentence.

    Args:
        model: its ``tokenizer`` and ``max_text_len`` are used.
        sentences: ``exp_id -> sentence``.
        describe: how a warning names an expression (``exp_id -> "video 'v', expression '0'"``).
    Returns:
        ``{exp_id: tokens dropped}`` of the sentences that are cut.
    """
    dropped = {}
    for exp_id, sentence in sentences.items():
        count = token_count(model.tokenizer, sentence)
        if count > model.max_text_len:
            dropped[exp_id] = count - model.max_text_len
            logger.warning(
                "%s: the sentence has %d tokens and ReferDINO's text encoder reads the first %d "
                "(max_text_len): its last %d token(s) are dropped",
                describe(exp_id),
                count,
                model.max_text_len,
                dropped[exp_id],
            )
    return dropped


def build_stage1_model(options: Stage1Options, device: str) -> ReferDINO:
    """ReferDINO as ``options`` configure it (model, checkpoint, text encoder, autocast)."""
    return load_referdino(
        options.model,
        options.checkpoint,
        text_encoder=options.text_encoder,
        device=device,
        autocast=None if options.autocast is None else str(options.autocast),
    )


def stage1_record(
    model: ReferDINO,
    images: list[Image.Image],
    sentences: Mapping[str, str],
    options: Stage1Options,
    *,
    video_id: str,
    frame_names: list[str],
    legacy: LegacyVideo | None = None,
    progress: bool = False,
    answer: str = THRESHOLD_OR_TOP1,
    video: Video | None = None,
    on_expression: Callable[[str], None] | None = None,
) -> im.Stage1Video:
    """Stage-1 record of one video: ReferDINO on every sentence, the frames encoded once.

    On a GPU, each sentence's masks are upsampled, thresholded and run-length encoded on the GPU
    (only run lengths come back), in a background thread while the model runs the next sentence;
    on the CPU, in line, as before (:func:`proposals_from_outputs`).

    Args:
        images: the video's RGB frames, in the order of ``frame_names``.
        sentences: ``exp_id -> sentence``.
        options: the ``stage1`` section (``short_side``, ``top_k``, ``obj_threshold``,
            ``feature_cache_device``).
        legacy: if given, each expression's raw outputs are added to it (legacy export).
        progress: show a progress bar over the sentences.
        answer: the stage-1 answer rule (:data:`rvos.proposals.ANSWER_RULES`).
        video: the split's video; needed by a rule that merges annotators' objects.
        on_expression: called with each ``exp_id`` once its record is made.
    Returns:
        per sentence, the top queries' ``[T, K]`` scores, ``[T, K, 4]`` boxes and
        ``[T, K, H, W]`` masks at frame size, and ReferDINO's own answer.
    """
    height, width = images[0].height, images[0].width
    record = im.Stage1Video(video_id, list(frame_names), height, width)
    merge_logits: dict[str, np.ndarray] = {}

    def make_proposals(raw: RawOutputs) -> im.ExpressionProposals:
        return proposals_from_outputs(
            raw.scores,
            raw.boxes,
            raw.mask_logits,
            (height, width),
            top_k=options.top_k,
            obj_threshold=options.obj_threshold,
            answer=answer,
        )

    def record_done(exp_id: str, proposals: im.ExpressionProposals) -> None:
        record.expressions[exp_id] = proposals
        if on_expression is not None:
            on_expression(exp_id)

    with torch.inference_mode(), MaskWriter(background=model.device.type == "cuda") as writer:
        outputs = run_expressions(
            model,
            images,
            sentences,
            short_side=options.short_side,
            feature_cache_device=options.feature_cache_device,
        )
        if progress:
            outputs = tqdm(
                outputs, total=len(sentences), desc="stage 1 (ReferDINO)", unit="sentence"
            )
        for exp_id, raw in outputs:
            for done_id, proposals in writer.submit(exp_id, make_proposals, raw):
                record_done(done_id, proposals)
            logits = answer_logits(
                raw.scores, raw.mask_logits, answer=answer, obj_threshold=options.obj_threshold
            )
            if logits is not None:
                merge_logits[exp_id] = logits
            if legacy is not None:
                legacy.expressions[exp_id] = raw.legacy_arrays()
        for done_id, proposals in writer.finish():
            record_done(done_id, proposals)
    if merge_logits:
        if video is None:
            raise ValueError(f"answer rule {answer!r} needs the split's video to merge annotators")
        apply_annotator_argmax(record, merge_logits, video)
    return record


class MaskWriter:
    """Makes each expression's record entry, in line or in one background thread.

    In the background (as Cutie writes its results), the entry of expression ``i`` is made while
    the caller computes expression ``i + 1``: :meth:`submit` returns the entries finished by then,
    in submission order, and :meth:`finish` the rest. At most one entry is in flight, so at most
    two expressions' outputs are held. An error in the thread is raised by the next call.

    Args:
        background: use a thread (on a GPU the masks are made on the device, so the thread mostly
            waits for the device and for the run boundaries to arrive); ``False``: in line.
    """

    def __init__(self, *, background: bool) -> None:
        self._pool = ThreadPoolExecutor(1, "stage1-masks") if background else None
        self._pending: tuple[str, Future] | None = None

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def submit(
        self, exp_id: str, make: Callable[[RawOutputs], im.ExpressionProposals], raw: RawOutputs
    ) -> list[tuple[str, im.ExpressionProposals]]:
        """Start ``make(raw)`` for ``exp_id``; returns the entries finished before it."""
        if self._pool is None:
            return [(exp_id, make(raw))]
        done = self.finish()
        self._pending = (exp_id, self._pool.submit(_in_inference_mode, make, raw))
        return done

    def finish(self) -> list[tuple[str, im.ExpressionProposals]]:
        """Wait for the entry in flight; returns it (or nothing)."""
        if self._pending is None:
            return []
        exp_id, future = self._pending
        self._pending = None
        return [(exp_id, future.result())]


def _in_inference_mode(make: Callable[[RawOutputs], im.ExpressionProposals], raw: RawOutputs):
    """``make(raw)`` under ``torch.inference_mode`` (a thread does not inherit the caller's)."""
    with torch.inference_mode():
        return make(raw)


def build_video_processor(job: Stage1Job, device: str) -> VideoProcessor:
    """Worker entry point (see :mod:`rvos.workers`): the model loads once, then one call per video.

    With ``stage1.legacy_dir`` no model runs: each video's ReferDINO-Plus file is imported.
    """
    options, records = job.options, job.records
    split = Split(job.data_root, job.layout)
    if records.legacy_dir is not None:
        return lambda video_id: records.import_legacy(split, video_id)

    model = build_stage1_model(options, device)

    def process(video_id: str) -> None:
        entry = split.videos[video_id]
        images = split.load_frames(video_id)
        legacy = None
        if options.export_legacy:
            size = (images[0].height, images[0].width)
            legacy = LegacyVideo(video_id, str(split.frame_dir(video_id)), size)
        sentences = {exp_id: e.text for exp_id, e in entry.expressions.items()}
        warn_dropped_tokens(
            model, sentences, lambda exp_id: f"video {video_id!r}, expression {exp_id!r}"
        )

        def run(run_options: Stage1Options) -> im.Stage1Video:
            return stage1_record(
                model,
                images,
                sentences,
                run_options,
                video_id=video_id,
                frame_names=list(entry.frame_names),
                legacy=legacy,
                answer=records.answer,
                video=entry,
            )

        try:
            record = run(options)
        except torch.OutOfMemoryError:
            if options.feature_cache_device == CacheDevice.cpu:
                raise
            record = None  # free the failed attempt before retrying
        if record is None:
            torch.cuda.empty_cache()
            logger.warning(
                "video %s: CUDA out of memory; retrying with the backbone features in host memory "
                "(stage1.feature_cache_device=cpu)",
                video_id,
            )
            record = run(dataclasses.replace(options, feature_cache_device=CacheDevice.cpu))
        if legacy is not None:
            write_legacy_npz(records.work_dir / "legacy_stage1" / f"{video_id}.npz", legacy)
        im.save_stage1(records.path(video_id), record, fingerprint=records.fingerprint)

    return process
