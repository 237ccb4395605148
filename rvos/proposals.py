"""Stage-1 records: built from a model's raw outputs or from ReferDINO-Plus legacy files, and
read back by the stages after it (:class:`Stage1Records`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvos import intermediates as im
from rvos.intermediates import ExpressionProposals, Stage1Video
from rvos.legacy import LegacyVideo, read_legacy_npz
from rvos.masks import RunLengthMasks, upsample_mask_logits
from rvos.mevis import DataError, MevisSplit


def answer_query_ids(scores: np.ndarray, obj_threshold: float) -> np.ndarray:
    """Queries of the stage-1 answer, as ReferDINO's MeViS inference script selects them.

    Args:
        scores: ``[T, N]`` per-frame sigmoid scores.
        obj_threshold: keep queries whose mean score over all frames exceeds it.
    Returns:
        ``[n] int64`` query ids (ascending); the single best query if none passes.
    """
    mean = np.asarray(scores, dtype=np.float32).mean(axis=0)
    kept = np.flatnonzero(mean > obj_threshold)
    if kept.size == 0:
        kept = np.array([int(np.argmax(mean))])
    return kept.astype(np.int64)


def kept_query_ids(scores: np.ndarray, top_k: int | None) -> np.ndarray:
    """The queries a stage-1 record keeps, in the model's query order.

    Args:
        scores: ``[T, N]`` per-frame sigmoid scores.
        top_k: keep the ``top_k`` queries with the highest mean score (stable on ties);
            ``None``: all ``N`` queries, as ReferDINO-Plus's refine script sees them.
    Returns:
        ``[min(K, N)] int64`` query ids, ascending.
    """
    num_queries = np.shape(scores)[1]
    if top_k is None or top_k >= num_queries:
        return np.arange(num_queries, dtype=np.int64)
    mean = np.asarray(scores, dtype=np.float32).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:top_k]
    return np.sort(best).astype(np.int64)


def proposals_from_outputs(
    scores: np.ndarray,
    boxes: np.ndarray,
    mask_logits: np.ndarray,
    frame_size: tuple[int, int],
    *,
    top_k: int | None,
    obj_threshold: float,
    frames_per_chunk: int = 8,
) -> ExpressionProposals:
    """Build one expression's stage-1 record from the model outputs.

    Args:
        scores: ``[T, N] float32`` sigmoid scores.
        boxes: ``[T, N, 4] float32`` normalised ``(cx, cy, w, h)``.
        mask_logits: ``[T, N, h, w]`` mask logits.
        frame_size: ``(H, W)`` original frame size.
        top_k: queries kept in the record (``None``: all); see :func:`kept_query_ids`.
        obj_threshold: threshold of the stage-1 answer (:func:`answer_query_ids`).
        frames_per_chunk: frames upsampled and encoded at a time (bounds memory).
    """
    kept = kept_query_ids(scores, top_k)
    answer = answer_query_ids(scores, obj_threshold)
    needed = np.union1d(kept, answer)
    column = {int(q): i for i, q in enumerate(needed)}
    kept_cols = [column[int(q)] for q in kept]
    answer_cols = [column[int(q)] for q in answer]
    logits = np.asarray(mask_logits)[:, needed]
    kept_parts, answer_parts = [], []
    # A few frames at a time: full-size masks of a long video do not fit in memory at once.
    for start in range(0, logits.shape[0], frames_per_chunk):
        binary = upsample_mask_logits(logits[start : start + frames_per_chunk], frame_size)
        kept_parts.append(RunLengthMasks.encode(binary[:, kept_cols]))
        answer_parts.append(RunLengthMasks.encode(binary[:, answer_cols].any(axis=1)))
    return ExpressionProposals(
        scores=np.ascontiguousarray(np.asarray(scores)[:, kept], dtype=np.float32),
        boxes=np.ascontiguousarray(np.asarray(boxes)[:, kept], dtype=np.float32),
        masks=RunLengthMasks.concatenate(kept_parts),
        query_ids=kept,
        answer=RunLengthMasks.concatenate(answer_parts),
    )


def stage1_from_legacy(
    legacy: LegacyVideo, frame_names: Sequence[str], *, obj_threshold: float
) -> Stage1Video:
    """Convert a ReferDINO-Plus legacy file to a stage-1 record, keeping all of its queries.

    Raises:
        ValueError: its frame count differs from ``frame_names`` (the split's list).
    """
    height, width = legacy.size
    video = Stage1Video(
        video_id=legacy.video_id, frame_names=list(frame_names), height=height, width=width
    )
    for exp_id, arrays in legacy.expressions.items():
        if arrays["scores"].shape[0] != len(frame_names):
            raise ValueError(
                f"legacy video {legacy.video_id!r}, expression {exp_id!r}: "
                f"{arrays['scores'].shape[0]} frames, meta_expressions.json lists "
                f"{len(frame_names)}"
            )
        # All queries in the file's order: stage 2 indexes them as the original script did.
        video.expressions[exp_id] = proposals_from_outputs(
            arrays["scores"],
            arrays["boxes"],
            arrays["masks"],
            (height, width),
            top_k=None,
            obj_threshold=obj_threshold,
        )
    return video


@dataclass(frozen=True)
class Stage1Records:
    """Where a run's stage-1 records are, and how to make one from a legacy file.

    Attributes:
        work_dir: the run's ``work_dir`` (records in ``work_dir/stage1/<video>.npz``).
        fingerprint: the configuration fingerprint a usable record carries.
        legacy_dir: a folder of ReferDINO-Plus ``<video>.npz`` to import instead of running a
            stage-1 model (``stage1.legacy_dir``), or ``None``.
        obj_threshold: threshold of the stage-1 answer of imported files (``stage1.obj_threshold``).
    """

    work_dir: Path
    fingerprint: str
    legacy_dir: Path | None
    obj_threshold: float

    def path(self, video_id: str) -> Path:
        return im.stage_path(self.work_dir, 1, video_id)

    def import_legacy(self, split: MevisSplit, video_id: str) -> None:
        """Convert ``legacy_dir/<video_id>.npz`` into a record (all of its queries kept).

        Raises:
            DataError: the file's frames disagree with the split's list (or it is unreadable:
                :class:`~rvos.legacy.LegacyFormatError`, a ``ValueError``).
        """
        assert self.legacy_dir is not None
        legacy = read_legacy_npz(Path(self.legacy_dir) / f"{video_id}.npz")
        try:
            record = stage1_from_legacy(
                legacy, split.videos[video_id].frame_names, obj_threshold=self.obj_threshold
            )
        except ValueError as err:
            raise DataError(str(err)) from None
        im.save_stage1(self.path(video_id), record, fingerprint=self.fingerprint)

    def load(self, split: MevisSplit, video_id: str) -> Stage1Video:
        """The video's record, its expressions in ``meta_expressions.json`` order; with
        ``legacy_dir``, imported from the legacy file first if not done yet.

        Raises:
            DataError: the record does not cover the video's frames or expressions.
            IntermediateError: the record is missing or unreadable.
        """
        path = self.path(video_id)
        if self.legacy_dir is not None and not im.is_finished(
            path, im.STAGE1_KIND, self.fingerprint
        ):
            self.import_legacy(split, video_id)
        record = im.load_stage1(path)
        video = split.videos[video_id]
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
