"""Stage 1 per video: ReferDINO on every expression, the backbone run once per video.

The Swin backbone and input projections do not depend on the sentence, so a video's features are
computed once (:meth:`ReferDINO.encode_video`) and every expression runs on them
(:meth:`ReferDINO.infer_features`): bit-identical to running ``infer`` per expression, as the
original inference script does.

A video longer than ``stage1.window.frames`` runs window by window (:mod:`stage1_referdino.windows`):
each window's frames are read, encoded once and run for every expression before the next window is
read, so that only one window's frames and features are held; each expression's queries are
stitched across the windows as they come.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rvos import intermediates as im
from rvos.frames import FrameFiles
from rvos.legacy import LegacyVideo, write_legacy_npz
from rvos.masks import RunLengthMasks
from rvos.options import CacheDevice
from rvos.proposals import (
    THRESHOLD_OR_TOP1,
    Stage1Records,
    answer_logits,
    apply_annotator_argmax,
    get_answer_rule,
    proposals_from_query_masks,
)
from rvos.splits import Split, Video
from rvos.workers import VideoProcessor
from stage1_referdino.build import load_referdino
from stage1_referdino.model import ReferDINO
from stage1_referdino.model.text_encoder import token_count
from stage1_referdino.options import Stage1Options
from stage1_referdino.postprocess import proposals_from_outputs, query_masks
from stage1_referdino.transforms import preprocess
from stage1_referdino.windows import QueryStitcher, Window, WindowOutputs, clip_windows

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
            model's device (the record's masks are made there:
            :func:`~stage1_referdino.postprocess.proposals_from_outputs`).
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
    images: Sequence[Image.Image],
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
    del video  # the features are all the expressions need
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


@dataclass(frozen=True)
class Stage1Progress:
    """How far stage 1 is on a video: which window, and how many of its expressions are done.

    Attributes:
        window: the window the model runs on (one pass: one window of every frame).
        window_index: its index, of ``num_windows``.
        num_windows: windows of the video.
        expressions_done: expressions finished on this window, of ``num_expressions``.
        num_expressions: expressions of the video.
        num_frames: frames of the video.
    """

    window: Window
    window_index: int
    num_windows: int
    expressions_done: int
    num_expressions: int
    num_frames: int

    @property
    def frames_done(self) -> float:
        """Frames whose outputs are made: those of earlier windows, and this window's share."""
        owned = self.window.own_stop - self.window.own_start
        return self.window.own_start + owned * self.expressions_done / self.num_expressions


Stage1ProgressCallback = Callable[[Stage1Progress], None]


def stage1_record(
    model: ReferDINO,
    images: Sequence[Image.Image],
    sentences: Mapping[str, str],
    options: Stage1Options,
    *,
    video_id: str,
    frame_names: list[str],
    legacy: LegacyVideo | None = None,
    progress: bool = False,
    answer: str = THRESHOLD_OR_TOP1,
    video: Video | None = None,
    on_progress: Stage1ProgressCallback | None = None,
) -> im.Stage1Video:
    """Stage-1 record of one video: ReferDINO on every sentence, the frames encoded once.

    In one pass (:func:`one_pass_record`), or window by window when the video is longer than
    ``options.window.frames`` (:func:`windowed_record`).

    Args:
        images: the video's RGB frames, in the order of ``frame_names`` (any sequence: a window
            reads only its own).
        sentences: ``exp_id -> sentence``.
        options: the ``stage1`` section (``short_side``, ``top_k``, ``obj_threshold``,
            ``feature_cache_device``, ``window``).
        legacy: if given, each expression's raw outputs are added to it (legacy export).
        progress: show a progress bar over the sentences (and windows).
        answer: the stage-1 answer rule (:data:`rvos.proposals.ANSWER_RULES`).
        video: the split's video; needed by a rule that merges annotators' objects.
        on_progress: told when a window starts and after each of its sentences.
    Returns:
        per sentence, the top queries' ``[T, K]`` scores, ``[T, K, 4]`` boxes and
        ``[T, K, H, W]`` masks at frame size, and ReferDINO's own answer.
    """
    windows = clip_windows(len(images), options.window)
    record = one_pass_record if len(windows) == 1 else windowed_record
    return record(
        model,
        images,
        sentences,
        options,
        windows=windows,
        video_id=video_id,
        frame_names=frame_names,
        legacy=legacy,
        progress=progress,
        answer=answer,
        video=video,
        on_progress=on_progress,
    )


def _reporter(
    windows: Sequence[Window],
    num_expressions: int,
    *,
    progress: bool,
    on_progress: Stage1ProgressCallback | None,
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """``(report(window_index, expressions_done), close())`` for ``on_progress`` and, with
    ``progress``, a bar over the (window, sentence) pairs."""
    bar = None
    if progress:
        unit = "sentence" if len(windows) == 1 else "window-sentence"
        total = len(windows) * num_expressions
        bar = tqdm(total=total, desc="stage 1 (ReferDINO)", unit=unit)
    num_frames = windows[-1].stop

    def report(window_index: int, expressions_done: int) -> None:
        if bar is not None and expressions_done:
            bar.update()
        if on_progress is not None:
            on_progress(
                Stage1Progress(
                    windows[window_index],
                    window_index,
                    len(windows),
                    expressions_done,
                    num_expressions,
                    num_frames,
                )
            )

    return report, (bar.close if bar is not None else lambda: None)


def frame_size(images: Sequence[Image.Image]) -> tuple[int, int]:
    """``(H, W)`` of the first frame (read once: a sequence may decode it on each access)."""
    first = images[0]
    return first.height, first.width


def one_pass_record(
    model: ReferDINO,
    images: Sequence[Image.Image],
    sentences: Mapping[str, str],
    options: Stage1Options,
    *,
    windows: Sequence[Window],
    video_id: str,
    frame_names: list[str],
    legacy: LegacyVideo | None,
    progress: bool,
    answer: str,
    video: Video | None,
    on_progress: Stage1ProgressCallback | None,
) -> im.Stage1Video:
    """:func:`stage1_record` in one pass: the model sees every frame at once (``windows`` is
    the one window of every frame), as ReferDINO's MeViS inference.

    Each sentence's masks are upsampled, thresholded and run-length encoded where the model runs
    (:func:`~stage1_referdino.postprocess.proposals_from_outputs`): on a GPU (only run lengths
    come back) in a background thread while the model runs the next sentence; on the CPU in line.
    """
    height, width = frame_size(images)
    record = im.Stage1Video(video_id, list(frame_names), height, width)
    merge_logits: dict[str, np.ndarray] = {}
    report, close = _reporter(windows, len(sentences), progress=progress, on_progress=on_progress)
    done = 0

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
        nonlocal done
        record.expressions[exp_id] = proposals
        done += 1
        report(0, done)

    report(0, 0)
    with torch.inference_mode(), MaskWriter(background=model.device.type == "cuda") as writer:
        outputs = run_expressions(
            model,
            images,
            sentences,
            short_side=options.short_side,
            feature_cache_device=options.feature_cache_device,
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
    close()
    if merge_logits:
        if video is None:
            raise ValueError(f"answer rule {answer!r} needs the split's video to merge annotators")
        apply_annotator_argmax(record, merge_logits, video)
    return record


@dataclass
class StitchedExpression:
    """One expression's stitched outputs, gathered window by window (:func:`windowed_record`).

    Attributes:
        stitcher: matches each window's queries to the running ones.
        scores: per window, ``[t, Q] float32`` of the frames it owns.
        boxes: per window, ``[t, Q, 4] float32``.
        masks: per window, ``[t, Q, H, W]`` run-length masks of every query.
        mask_logits: per window, ``[t, Q, h, w] float32`` (only for the legacy export or an
            answer rule that merges annotators: these hold a whole video's logits).
    """

    stitcher: QueryStitcher
    scores: list[np.ndarray] = dataclasses.field(default_factory=list)
    boxes: list[np.ndarray] = dataclasses.field(default_factory=list)
    masks: list[RunLengthMasks] = dataclasses.field(default_factory=list)
    mask_logits: list[np.ndarray] = dataclasses.field(default_factory=list)


def windowed_record(
    model: ReferDINO,
    images: Sequence[Image.Image],
    sentences: Mapping[str, str],
    options: Stage1Options,
    *,
    windows: Sequence[Window],
    video_id: str,
    frame_names: list[str],
    legacy: LegacyVideo | None,
    progress: bool,
    answer: str,
    video: Video | None,
    on_progress: Stage1ProgressCallback | None,
) -> im.Stage1Video:
    """:func:`stage1_record` window by window (:mod:`stage1_referdino.windows`).

    Windows outside, expressions inside: each window's frames are read and encoded once for
    every expression, then dropped. Each expression's outputs are stitched as they come, and the
    masks of the frames a window owns are run-length encoded at once, so what grows with the
    video is ``[T, Q]`` scores, ``[T, Q, 4]`` boxes and run lengths. With one window of every
    frame, the record equals :func:`one_pass_record`'s bit for bit.
    """
    height = width = 0  # the first window's first frame tells
    keep_logits = legacy is not None or get_answer_rule(answer).annotator_argmax
    stitched = {exp_id: StitchedExpression(QueryStitcher(windows)) for exp_id in sentences}
    report, close = _reporter(windows, len(sentences), progress=progress, on_progress=on_progress)
    with torch.inference_mode():
        for index, window in enumerate(windows):
            report(index, 0)
            frames = [images[t] for t in range(window.start, window.stop)]
            height, width = frame_size(frames)
            outputs = run_expressions(
                model,
                frames,
                sentences,
                short_side=options.short_side,
                feature_cache_device=options.feature_cache_device,
            )
            del frames
            for done, (exp_id, raw) in enumerate(outputs, start=1):
                entry = stitched[exp_id]
                owned = entry.stitcher.add(WindowOutputs(raw.scores, raw.boxes, raw.mask_logits))
                entry.scores.append(owned.scores)
                entry.boxes.append(owned.boxes)
                entry.masks.append(query_masks(owned.mask_logits, (height, width)))
                if keep_logits:
                    entry.mask_logits.append(owned.mask_logits.cpu().numpy())
                report(index, done)
    close()
    record = im.Stage1Video(video_id, list(frame_names), height, width)
    merge_logits: dict[str, np.ndarray] = {}
    for exp_id, entry in stitched.items():
        scores, boxes = np.concatenate(entry.scores), np.concatenate(entry.boxes)
        record.expressions[exp_id] = proposals_from_query_masks(
            scores,
            boxes,
            RunLengthMasks.concatenate(entry.masks),
            top_k=options.top_k,
            obj_threshold=options.obj_threshold,
            answer=answer,
        )
        if keep_logits:
            mask_logits = np.concatenate(entry.mask_logits)
            logits = answer_logits(
                scores, mask_logits, answer=answer, obj_threshold=options.obj_threshold
            )
            if logits is not None:
                merge_logits[exp_id] = logits
            if legacy is not None:
                legacy.expressions[exp_id] = {
                    "scores": scores,
                    "boxes": boxes,
                    "masks": mask_logits,
                }
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
        windows = clip_windows(entry.num_frames, options.window)
        # One pass needs every frame at once; windows read theirs as they run.
        if len(windows) == 1:
            images = split.load_frames(video_id)
        else:
            images = FrameFiles(split.frame_paths(video_id))
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
