"""Ref-DAVIS17's evaluation: the DAVIS 2017 unsupervised protocol, per annotator.

Predictions are per-annotator indexed PNGs (:mod:`rvos.davis`). The evaluation follows the DAVIS
2017 toolkit (``tools/davis2017`` in ReferDINO), unsupervised task, as ReferDINO's
``eval/eval_davis.py`` runs it on each annotator's folder:

- ground truth: the indexed PNGs of the split (``Annotations_unsupervised``); value 255 is void
  (left out of both J and F), the number of objects is the largest label on the *first* frame;
- a prediction's objects are its labels ``1..max`` over all frames (at most 20); when it has
  fewer than the ground truth, empty objects are added;
- J and F per frame (:func:`rvos.metrics.frame_scores` on both masks with the void pixels
  removed) for every (prediction, ground-truth) pair; the pairs are matched by the Hungarian
  method maximising the mean over frames of ``(J + F) / 2`` (``scipy``'s
  ``linear_sum_assignment``, as the toolkit);
- per matched ground-truth object: Mean (mean over frames), Recall (fraction of frames above 0.5)
  and Decay (mean of the first quarter of frames minus mean of the last quarter; quarters as the
  toolkit cuts them) of J and of F;
- per annotator: each statistic averaged over all objects of all videos, ``J&F = (J + F) / 2``;
  the benchmark score: each statistic averaged over the annotators (``eval_davis.py``'s ``avg``).

Where this differs from the toolkit: a missing prediction file (video, frame) is scored as an
empty prediction with a warning (the toolkit stops); the per-object scores are reported under the
ground-truth object they were matched to (the toolkit lists them in prediction order); decay bins
are computed in ``int64`` (the toolkit casts them to ``uint8``, which wraps past 256 frames; DAVIS
sequences are shorter).

The results and their table: :class:`rvos.scores.DavisResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from rvos.archive_limits import ArchiveLimits, default_limits
from rvos.archive_reader import PNG_SUFFIX, Member, PredictionArchive, read_prediction_png
from rvos.davis import VOID_LABEL, annotator_dir, decode_label_png
from rvos.metrics import DEFAULT_BOUND_TH, frame_scores
from rvos.options import process_count
from rvos.progress import progress_bar
from rvos.scores import AnnotatorScore, DavisResult, ObjectScore
from rvos.splits import DataError, Split

logger = logging.getLogger(__name__)

# The toolkit refuses predictions with more objects than this per sequence (unsupervised task).
MAX_PROPOSALS = 20
# Recall counts the frames whose score exceeds this (davis2017 toolkit: db_statistics).
RECALL_THRESHOLD = 0.5
# Decay compares the first and the last of this many bins of frames (db_statistics).
DECAY_BINS = 4


# ----------------------------------------------------------------------------- one sequence


def ground_truth_objects(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth objects of a sequence, as the toolkit separates them.

    Args:
        labels: ``[T, H, W]`` integer labels (0 background, 255 void).
    Returns:
        ``([n, T, H, W] bool, [T, H, W] bool)``: object ``i + 1``'s masks, and the void pixels;
        ``n`` is the largest label of the first frame (void excluded).
    """
    void = labels == VOID_LABEL
    labels = np.where(void, 0, labels)
    num_objects = int(labels[0].max())
    return _split_labels(labels, num_objects), void


def predicted_objects(labels: np.ndarray) -> np.ndarray:
    """``[n, T, H, W] bool``: a prediction's objects ``1..n``, ``n`` its largest label."""
    return _split_labels(labels, int(labels.max()))


def _split_labels(labels: np.ndarray, num_objects: int) -> np.ndarray:
    ids = np.arange(1, num_objects + 1).reshape(-1, 1, 1, 1)
    return labels[None] == ids


def match_objects(
    gt: np.ndarray, void: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame J and F of the ground-truth objects, matched to predicted ones (Hungarian).

    Args:
        gt: ``[n_gt, T, H, W] bool`` ground-truth objects.
        void: ``[T, H, W] bool`` pixels left out of both scores.
        pred: ``[n_pred, T, H, W] bool`` predicted objects (padded with empty ones to ``n_gt``).
        bound_th: boundary tolerance of F.
    Returns:
        ``(j, f, gt_index)``: ``[n_gt, T] float64`` scores of the matched pairs and the
        ground-truth object (0-based) of each row, rows in prediction order as the toolkit's.
    Raises:
        ValueError: more than :data:`MAX_PROPOSALS` predicted objects.
    """
    from scipy.optimize import linear_sum_assignment

    num_gt, num_frames = gt.shape[:2]
    if pred.shape[0] > MAX_PROPOSALS:
        raise ValueError(
            f"{pred.shape[0]} predicted objects, the DAVIS protocol allows {MAX_PROPOSALS}"
        )
    if pred.shape[0] < num_gt:
        padding = np.zeros((num_gt - pred.shape[0], *gt.shape[1:]), dtype=bool)
        pred = np.concatenate([pred, padding])
    keep = ~void
    j_all = np.zeros((pred.shape[0], num_gt, num_frames))
    f_all = np.zeros((pred.shape[0], num_gt, num_frames))
    for gt_idx in range(num_gt):
        for pred_idx in range(pred.shape[0]):
            for t in range(num_frames):
                j_all[pred_idx, gt_idx, t], f_all[pred_idx, gt_idx, t] = frame_scores(
                    pred[pred_idx, t] & keep[t], gt[gt_idx, t] & keep[t], bound_th
                )
    mean_jf = (j_all.mean(axis=2) + f_all.mean(axis=2)) / 2
    rows, cols = linear_sum_assignment(-mean_jf)
    return j_all[rows, cols], f_all[rows, cols], cols


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall and Decay of per-frame scores, as the DAVIS toolkit's ``db_statistics``.

    Args:
        values: ``[T] float`` per-frame J or F.
    Returns:
        ``(mean, recall, decay)``: the mean; the fraction of frames above
        :data:`RECALL_THRESHOLD`; the mean of the first bin of frames minus that of the last,
        with ``DECAY_BINS + 1`` bin bounds ``round(linspace(1, T, 5)) - 1`` and bin ``i``
        spanning bounds ``i`` to ``i + 1`` inclusive.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > RECALL_THRESHOLD))
    bounds = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    bins = [values[bounds[i] : bounds[i + 1] + 1] for i in range(DECAY_BINS)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[-1]))
    return mean, recall, decay


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _SequenceTask:
    """What a worker needs to score one annotator's predictions on one video (picklable)."""

    annotator: int
    video_id: str
    gt_paths: tuple[Path, ...]
    members: tuple[Member | None, ...]  # one per frame, read by the worker; None: missing


def _read_labels(paths: Sequence[Path], video_id: str) -> np.ndarray:
    """``[T, H, W]`` ground-truth labels of a video; :class:`DataError` naming a missing file."""
    frames = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"video {video_id!r}: ground-truth annotation {path} not found")
        frames.append(decode_label_png(path.read_bytes(), str(path)))
    if len({f.shape for f in frames}) != 1:
        raise DataError(f"video {video_id!r}: ground-truth annotations differ in size")
    return np.stack(frames)


def _score_sequence(
    task: _SequenceTask, bound_th: float, limits: ArchiveLimits
) -> dict[int, ObjectScore]:
    """``{gt object id: statistics}`` of one annotator on one video."""
    gt_labels = _read_labels(task.gt_paths, task.video_id)
    where = f"{annotator_dir(task.annotator)}/{task.video_id}"
    size = gt_labels.shape[1:]
    pred_frames = []
    for frame_idx, member in enumerate(task.members):
        if member is None:
            pred_frames.append(np.zeros(size, dtype=np.uint8))
            continue
        data = read_prediction_png(member, limits, size, f"{where}, frame {frame_idx}")
        pred_frames.append(decode_label_png(data, member.where))
    gt, void = ground_truth_objects(gt_labels)
    try:
        pred = predicted_objects(np.stack(pred_frames))
        j, f, gt_index = match_objects(gt, void, pred, bound_th)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return {
        int(g) + 1: ObjectScore(*statistics(j[row]), *statistics(f[row]))
        for row, g in enumerate(gt_index)
    }


def _make_task(
    split: Split, archive: PredictionArchive, annotator: int, video_id: str
) -> tuple[_SequenceTask, int]:
    """The task of one annotator and video, and how many of its prediction PNGs are missing."""
    folder = annotator_dir(annotator)
    frame_names = split.videos[video_id].frame_names
    files = archive.file_names(folder, video_id)
    if files is None:
        logger.warning("%s/%s is not in the prediction: scored as empty masks", folder, video_id)
        files = set()
    members = tuple(
        archive.member(folder, video_id, name + PNG_SUFFIX) if name + PNG_SUFFIX in files else None
        for name in frame_names
    )
    missing = sum(member is None for member in members)
    if missing and files:
        logger.warning(
            "%s/%s: %d prediction frame(s) missing, scored as empty masks",
            folder,
            video_id,
            missing,
        )
    task = _SequenceTask(annotator, video_id, tuple(split.annotation_paths(video_id)), members)
    return task, missing


def evaluate_davis17(
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> DavisResult:
    """Score per-annotator indexed predictions with the DAVIS 2017 unsupervised protocol.

    Args:
        pred: zip file or folder holding ``anno_<k>/<video_id>/<frame_name>.png``.
        split: a split whose layout has annotators and indexed-PNG ground truth (``ref_davis17``).
        jobs: worker processes (joblib ``n_jobs``).
        bound_th: boundary tolerance of F.
        progress: show a progress bar.
        limits: what ``pred`` may hold (``None``: ``evaluation.limits`` of
            ``configs/pipeline.yaml``).
    Raises:
        DataError: the layout has no annotators or no annotations, or one is missing.
        ValueError: a damaged archive or member, one over the limits, an unreadable or
            mis-sized prediction, or more than 20 objects.
    """
    layout = split.layout
    if layout.annotators is None or layout.annotations_dir is None:
        raise DataError(
            f"data.layout={layout.name} has no annotators or no indexed-PNG ground truth: the "
            "davis17 metric needs data.layout=ref_davis17"
        )
    if not split.has_ground_truth:
        raise DataError(f"{split.ground_truth_path} not found: ground truth is needed to evaluate")
    missing: dict[int, int] = dict.fromkeys(range(layout.annotators), 0)
    limits = limits or default_limits()
    with PredictionArchive(pred, limits) as archive:
        for annotator in range(layout.annotators):
            if not archive.has_video(annotator_dir(annotator)):
                logger.warning(
                    "%s is not in %s: annotator %d scores as empty masks",
                    annotator_dir(annotator),
                    pred,
                    annotator,
                )
        tasks = []
        for annotator in range(layout.annotators):
            for video_id in split.video_ids:
                task, count = _make_task(split, archive, annotator, video_id)
                tasks.append(task)
                missing[annotator] += count
        unexpected = archive.unexpected()
    if unexpected.count:
        logger.warning("%s: %s", pred, unexpected.describe())
    results = Parallel(n_jobs=process_count(jobs, len(tasks)), return_as="generator")(
        delayed(_score_sequence)(task, bound_th, limits) for task in tasks
    )
    bar = progress_bar(
        results, total=len(tasks), desc="DAVIS J&F", unit="seq", disable=not progress
    )
    per_object: dict[int, dict[tuple[str, int], ObjectScore]] = {k: {} for k in missing}
    for task, scores in zip(tasks, bar, strict=True):
        for obj_id, score in scores.items():
            per_object[task.annotator][(task.video_id, obj_id)] = score
    return DavisResult(
        annotators={k: AnnotatorScore(per_object[k], missing[k]) for k in missing},
        unexpected=unexpected,
    )
