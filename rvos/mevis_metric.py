"""The official MeViS evaluation of a prediction archive (J, F and J&F), and MeViS v2's.

The prediction is a zip file or a folder holding ``<video_id>/<exp_id>/<frame_name>.png`` at its
top level (read by :class:`rvos.archive_reader.PredictionArchive`); the split (read through
:class:`rvos.mevis.MevisSplit`, with its id checks) has ``meta_expressions.json`` and
``mask_dict.json``. Every expression of every video listed in ``meta_expressions.json`` is
scored, as the official MeViS evaluation does:

- a prediction pixel is foreground when its grayscale value is nonzero (PNGs are read with
  OpenCV's grayscale decoder, like the official script);
- the ground truth of an expression is the union of its ``anno_id`` masks; a ``null`` RLE is an
  empty mask;
- J and F (:mod:`rvos.metrics`) are averaged over an expression's frames, then over expressions;
  ``J&F = (J + F) / 2``;
- a video missing from ``PRED`` scores J = F = 0 for each of its expressions; so does a missing
  expression folder; a missing frame PNG is an empty mask (with a warning naming it);
- a prediction PNG must have the ground truth's size, read from its header before it is decoded;
  the archive is read within ``evaluation.limits`` (:mod:`rvos.archive_reader`), and its members
  that no expression's frame asks for are counted in the result, not scored.

MeViS v2 (:func:`evaluate_mevis_v2`) adds expressions that refer to nothing (an empty ``anno_id``
list: empty ground truth on every frame) and reports their accuracies beside J, F and J&F
(:class:`rvos.scores.MevisV2Result`). The results and their tables: :mod:`rvos.scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from rvos.archive_limits import ArchiveLimits, default_limits
from rvos.archive_reader import (
    PNG_SUFFIX,
    Member,
    PredictionArchive,
    decode_png,
    png_size,
    read_prediction_png,
)
from rvos.metrics import DEFAULT_BOUND_TH, frame_scores, mean_scores
from rvos.mevis import MASK_FILE, DataError, MevisSplit, gt_frame_mask, gt_frame_size
from rvos.options import process_count
from rvos.progress import progress_bar
from rvos.scores import EvaluationResult, ExpressionScore, MevisV2Result
from rvos.splits import Split

logger = logging.getLogger(__name__)

# Warnings list at most this many missing frame names per expression.
_MAX_NAMED_FRAMES = 5


# ----------------------------------------------------------------------------- ground truth


def read_split(data_root: str | Path) -> tuple[Split, dict[str, list]]:
    """The split and its ground truth (``mask_dict.json``: ``anno_id -> [RLE or None]``).

    Raises:
        DataError: ``meta_expressions.json`` is missing or invalid, or ``mask_dict.json`` is
            missing (it only exists for splits with released ground truth, e.g. ``train`` and
            ``valid_u``; ``valid`` and ``test`` are scored by the challenge server) or invalid.
    """
    return _mask_dict(MevisSplit(data_root))


def _mask_dict(split: Split) -> tuple[Split, dict[str, list]]:
    """``(split, mask_dict)``; :class:`DataError` when the split has no ``mask_dict.json``."""
    if split.layout.mask_file is None:
        raise DataError(
            f"data.layout={split.layout.name} has no mask_dict.json ground truth: this metric "
            "needs a MeViS-layout split"
        )
    if not split.has_ground_truth:
        raise DataError(
            f"{split.root / MASK_FILE} not found: ground truth is needed to evaluate; MeViS "
            "releases it for train and valid_u only (valid and test are scored by the challenge "
            "server)"
        )
    return split, split.mask_dict


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _PlannedExpression:
    """One expression of the split and whether the prediction has it."""

    video_id: str
    exp_id: str
    frame_names: tuple[str, ...]
    anno_ids: tuple[str, ...]
    status: str  # "ok", "missing_video" or "missing_expression"


@dataclass(frozen=True)
class _ExpressionTask:
    """What a worker needs to score one expression (plain, picklable data)."""

    where: str  # "<video_id>/<exp_id>", for messages
    anno_ids: tuple[str, ...]
    gt_rles: dict[str, list]  # the anno_ids' entries of mask_dict.json
    members: tuple[Member | None, ...]  # one per frame, read by the worker; None: missing
    missing_frames: tuple[str, ...]


def _score_task(task: _ExpressionTask, bound_th: float, limits: ArchiveLimits) -> ExpressionScore:
    """Mean J and F of one expression, reading and decoding one frame at a time."""
    size = gt_frame_size(task.gt_rles, task.anno_ids) or _prediction_size(task, limits)
    scores = []
    has_foreground = False
    for frame_idx, member in enumerate(task.members):
        try:
            gt = gt_frame_mask(task.gt_rles, task.anno_ids, frame_idx, *size)
        except ValueError as err:
            raise ValueError(f"{task.where}: {err}") from None
        if member is None:
            pred = np.zeros(size, dtype=bool)
        else:
            frame = f"{task.where}, frame {frame_idx}"
            pred = decode_png(read_prediction_png(member, limits, size, frame), member.where)
        has_foreground = has_foreground or bool(pred.any())
        scores.append(frame_scores(pred, gt, bound_th))
    j, f = mean_scores(scores)
    return ExpressionScore(j, f, "ok", task.missing_frames, has_foreground)


def _prediction_size(task: _ExpressionTask, limits: ArchiveLimits) -> tuple[int, int]:
    """Frame size from the first prediction PNG's header, for an expression with no
    ground-truth RLE."""
    for member in task.members:
        if member is not None:
            data = member.read(limits.member_bytes)
            return png_size(data, member.where, limits.max_pixels)
    # Neither side has a pixel on any frame: every frame is "both empty", whatever its size.
    return (1, 1)


def _plan(
    split: Split, mask_dict: dict[str, list], archive: PredictionArchive
) -> list[_PlannedExpression]:
    """Every expression of the split, checked against the ground truth and the prediction."""
    plan = []
    for video_id, video in split.videos.items():
        has_video = archive.has_video(video_id)
        if not has_video:
            logger.warning("video %s is not in the prediction: its expressions score 0", video_id)
        for exp_id, expression in video.expressions.items():
            where = f"{video_id}/{exp_id}"
            _check_annotations(mask_dict, expression.anno_ids, video.num_frames, where)
            status = "ok"
            if not has_video:
                status = "missing_video"
            elif archive.file_names(video_id, exp_id) is None:
                logger.warning("expression %s is not in the prediction: it scores 0", where)
                status = "missing_expression"
            plan.append(
                _PlannedExpression(video_id, exp_id, video.frame_names, expression.anno_ids, status)
            )
    return plan


def _check_annotations(
    mask_dict: dict[str, list], anno_ids: Sequence[str], num_frames: int, where: str
) -> None:
    for anno_id in anno_ids:
        rles = mask_dict.get(anno_id)
        if rles is None:
            raise DataError(f"{where}: anno_id {anno_id} is not in {MASK_FILE}")
        if len(rles) != num_frames:
            raise DataError(
                f"{where}: anno_id {anno_id} has {len(rles)} masks in {MASK_FILE}, "
                f"the video has {num_frames} frames"
            )


def _make_task(
    item: _PlannedExpression, archive: PredictionArchive, mask_dict: dict[str, list]
) -> _ExpressionTask:
    """Read one expression's PNGs (a missing one is logged and scored as an empty mask)."""
    where = f"{item.video_id}/{item.exp_id}"
    files = archive.file_names(item.video_id, item.exp_id) or set()
    members = tuple(
        archive.member(item.video_id, item.exp_id, name + PNG_SUFFIX)
        if name + PNG_SUFFIX in files
        else None
        for name in item.frame_names
    )
    missing = tuple(
        name for name, member in zip(item.frame_names, members, strict=True) if member is None
    )
    if missing:
        shown = ", ".join(f"{where}/{name}{PNG_SUFFIX}" for name in missing[:_MAX_NAMED_FRAMES])
        more = len(missing) - _MAX_NAMED_FRAMES
        suffix = f" and {more} more" if more > 0 else ""
        logger.warning("missing prediction frames, scored as empty masks: %s%s", shown, suffix)
    return _ExpressionTask(
        where=where,
        anno_ids=item.anno_ids,
        gt_rles={anno_id: mask_dict[anno_id] for anno_id in item.anno_ids},
        members=members,
        missing_frames=missing,
    )


def evaluate_archive(
    pred: str | Path,
    data_root: str | Path,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> EvaluationResult:
    """Score a prediction archive with the official MeViS J&F.

    Args:
        pred: zip file or folder holding ``<video_id>/<exp_id>/<frame_name>.png``.
        data_root: split folder with ``meta_expressions.json`` and ``mask_dict.json``.
        jobs: worker processes (joblib ``n_jobs``: -1 = all cores, 1 = in this process).
        bound_th: boundary tolerance of F (fraction of the image diagonal).
        progress: show a tqdm progress bar over expressions.
        limits: what ``pred`` may hold (``None``: ``evaluation.limits`` of
            ``configs/pipeline.yaml``).
    Raises:
        FileNotFoundError: ``pred`` is missing.
        DataError: ``meta_expressions.json`` or ``mask_dict.json`` is missing or inconsistent,
            or no video of the split is in ``pred`` (a wrapper folder is stepped into).
        ValueError: a damaged archive or member, one over the limits, or an unreadable or
            mis-sized prediction PNG (:class:`rvos.archive_reader.ArchiveError` and others;
            the message names it).
    """
    split = MevisSplit(data_root)
    return evaluate_mevis(
        pred, split, jobs=jobs, bound_th=bound_th, progress=progress, limits=limits
    )


def evaluate_mevis(
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> EvaluationResult:
    """:func:`evaluate_archive` on a split already read (a layout with ``mask_dict.json``)."""
    split, mask_dict = _mask_dict(split)
    limits = limits or default_limits()
    with PredictionArchive(pred, limits) as archive:
        wrapper = archive.step_into_wrapper(split.video_ids)
        if wrapper is not None:
            logger.warning(
                "%s keeps its masks in a wrapper folder %r: evaluating inside it (the MeViS "
                "server wants <video>/<exp_id>/<frame>.png at the top level)",
                pred,
                wrapper,
            )
        if not any(archive.has_video(video_id) for video_id in split.video_ids):
            raise DataError(
                f"no video of the split {split.root} is in {pred} (found "
                f"{sorted(archive.top_level())[:5]}): is --data-root the split these "
                "predictions were made for?"
            )
        plan = _plan(split, mask_dict, archive)
        todo = [item for item in plan if item.status == "ok"]
        tasks = (
            delayed(_score_task)(_make_task(item, archive, mask_dict), bound_th, limits)
            for item in todo
        )
        results = Parallel(n_jobs=process_count(jobs, len(todo)), return_as="generator")(tasks)
        bar = progress_bar(results, total=len(todo), desc="J&F", unit="exp", disable=not progress)
        computed = {
            (item.video_id, item.exp_id): score for item, score in zip(todo, bar, strict=True)
        }
        unexpected = archive.unexpected()
    if unexpected.count:
        logger.warning("%s: %s", pred, unexpected.describe())
    scores = {
        (item.video_id, item.exp_id): computed.get(
            (item.video_id, item.exp_id), ExpressionScore(0.0, 0.0, item.status)
        )
        for item in plan
    }
    j, f = mean_scores([(score.j, score.f) for score in scores.values()])
    return EvaluationResult(j=j, f=f, jf=(j + f) / 2, per_expression=scores, unexpected=unexpected)


def evaluate_mevis_v2(
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> MevisV2Result:
    """MeViS v2: :func:`evaluate_mevis` plus the no-target and target accuracies (see the module
    docstring); an expression with an empty ``anno_id`` list has no target."""
    scores = evaluate_mevis(
        pred, split, jobs=jobs, bound_th=bound_th, progress=progress, limits=limits
    )
    targets = {
        (video_id, exp_id): bool(expression.anno_ids)
        for video_id, video in split.videos.items()
        for exp_id, expression in video.expressions.items()
    }
    return MevisV2Result(scores=scores, targets=targets)
