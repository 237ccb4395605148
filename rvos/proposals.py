"""Stage-1 records: built from a model's raw outputs (scores, boxes and every query's masks) or
from ReferDINO-Plus legacy files, and read back by the stages after it (:class:`Stage1Records`).

Which queries a record keeps (:func:`kept_query_ids`) and which make its answer (the rules below)
are decided here; the stage-1 runner makes the masks from its model's logits
(:mod:`stage1_referdino.postprocess`), a legacy file's are made here from the logits it holds
(:func:`rvos.masks.encode_mask_logits`, the same masks).

A record also holds each expression's *stage-1 answer*, the masks of ``stage1.zip``, chosen by an
answer rule (``data.answer``, registered by name in :data:`ANSWER_RULES`):

``threshold_or_top1``   the queries whose mean score exceeds ``stage1.obj_threshold``, the best
                        one if none does (ReferDINO's MeViS inference; MeViS v1)
``threshold_or_none``   the same, but nothing when no query passes (MeViS v2's no-target
                        expressions)
``top1``                the single best query by mean score (ReferDINO's Ref-YouTube-VOS inference)
``top1_per_annotator``  ``top1``, then the objects of one annotator share their pixels as
                        ReferDINO's Ref-DAVIS17 inference merges them (:func:`annotator_argmax`)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvos import intermediates as im
from rvos.intermediates import ExpressionProposals, Stage1Video
from rvos.legacy import LegacyVideo, read_legacy_npz
from rvos.masks import RunLengthMasks, encode_mask_logits
from rvos.registry import Registry
from rvos.splits import DataError, Split, Video

# ReferDINO's Ref-DAVIS17 merge (eval/inference_davis.py): per pixel, the background scores this,
# an object its mask probability, zeroed below MERGE_MIN_PROBABILITY; the highest wins.
MERGE_BACKGROUND_SCORE = 0.1
MERGE_MIN_PROBABILITY = 0.5


def answer_query_ids(scores: np.ndarray, obj_threshold: float) -> np.ndarray:
    """Queries of the stage-1 answer, as ReferDINO's MeViS inference script selects them.

    Args:
        scores: ``[T, N]`` per-frame sigmoid scores.
        obj_threshold: keep queries whose mean score over all frames exceeds it.
    Returns:
        ``[n] int64`` query ids (ascending); the single best query if none passes.
    """
    kept = threshold_query_ids(scores, obj_threshold)
    if kept.size == 0:
        kept = top1_query_ids(scores, obj_threshold)
    return kept


def threshold_query_ids(scores: np.ndarray, obj_threshold: float) -> np.ndarray:
    """``[n] int64`` the queries whose mean score over all frames exceeds ``obj_threshold``
    (ascending; empty when none does: the expression is answered with empty masks).

    Args:
        scores: ``[T, N]`` per-frame sigmoid scores.
    """
    mean = np.asarray(scores, dtype=np.float32).mean(axis=0)
    return np.flatnonzero(mean > obj_threshold).astype(np.int64)


def top1_query_ids(scores: np.ndarray, obj_threshold: float) -> np.ndarray:
    """``[1] int64`` the query with the highest mean score (the first on ties); ``obj_threshold``
    is not used (ReferDINO's Ref-YouTube-VOS and Ref-DAVIS17 inference keep one query).

    Args:
        scores: ``[T, N]`` per-frame sigmoid scores.
    """
    del obj_threshold
    mean = np.asarray(scores, dtype=np.float32).mean(axis=0)
    return np.array([int(np.argmax(mean))], dtype=np.int64)


@dataclass(frozen=True)
class AnswerRule:
    """How the stage-1 answer of an expression is chosen.

    Attributes:
        name: the registered name (``data.answer``).
        select: ``(scores [T, N], obj_threshold) -> [n] int64`` query ids whose masks' union is
            the answer.
        annotator_argmax: the answers of one annotator's objects then share their pixels by
            :func:`annotator_argmax` (needs a layout with annotators; ``select`` must return one
            query).
    """

    name: str
    select: Callable[[np.ndarray, float], np.ndarray]
    annotator_argmax: bool


THRESHOLD_OR_TOP1 = "threshold_or_top1"
# data.answer -> rule. Add an entry for another benchmark's rule.
ANSWER_RULES: Registry[AnswerRule] = Registry(
    "stage-1 answer rule",
    {
        rule.name: rule
        for rule in (
            AnswerRule(THRESHOLD_OR_TOP1, answer_query_ids, annotator_argmax=False),
            AnswerRule("threshold_or_none", threshold_query_ids, annotator_argmax=False),
            AnswerRule("top1", top1_query_ids, annotator_argmax=False),
            AnswerRule("top1_per_annotator", top1_query_ids, annotator_argmax=True),
        )
    },
)


def get_answer_rule(name: str) -> AnswerRule:
    """The rule registered as ``name``; ``ValueError`` listing the known names otherwise."""
    return ANSWER_RULES.lookup(name)


def check_answer_rule(name: str, split: Split) -> None:
    """Refuse a rule that merges annotators' objects on a layout without annotators.

    Raises:
        DataError: naming the rule and the layout.
    """
    if get_answer_rule(name).annotator_argmax and split.layout.annotators is None:
        raise DataError(
            f"data.answer={name} merges each annotator's objects, but data.layout="
            f"{split.layout.name} has no annotators (use it with data.layout=ref_davis17)"
        )


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


def proposals_from_query_masks(
    scores: np.ndarray,
    boxes: np.ndarray,
    masks: RunLengthMasks,
    *,
    top_k: int | None,
    obj_threshold: float,
    answer: str = THRESHOLD_OR_TOP1,
    frames_per_chunk: int = 8,
) -> ExpressionProposals:
    """One expression's stage-1 record from every query's masks: the kept queries' masks, and
    the answer, the union of the masks of the queries its rule chooses (a rule with
    ``annotator_argmax`` is finished per video by :func:`apply_annotator_argmax`).

    Args:
        scores: ``[T, N] float32`` sigmoid scores; boxes: ``[T, N, 4] float32`` normalised
            ``(cx, cy, w, h)``.
        masks: ``[T, N, H, W]`` every query's masks.
        top_k: queries kept in the record (``None``: all); see :func:`kept_query_ids`.
        obj_threshold: threshold of the answer rule.
        answer: the answer rule's name (:data:`ANSWER_RULES`).
        frames_per_chunk: frames of the answer decoded at a time (bounds memory).
    """
    kept = kept_query_ids(scores, top_k)
    chosen = get_answer_rule(answer).select(scores, obj_threshold)
    answer_parts = []
    for start in range(0, masks.shape[0], frames_per_chunk):
        frames = masks.select(slice(start, start + frames_per_chunk)).select(chosen, axis=1)
        answer_parts.append(RunLengthMasks.encode(frames.decode().any(axis=1)))
    return ExpressionProposals(
        scores=np.ascontiguousarray(np.asarray(scores)[:, kept], dtype=np.float32),
        boxes=np.ascontiguousarray(np.asarray(boxes)[:, kept], dtype=np.float32),
        masks=masks.select(kept, axis=1),
        query_ids=kept,
        answer=RunLengthMasks.concatenate(answer_parts),
    )


def answer_logits(
    scores: np.ndarray, mask_logits, *, answer: str, obj_threshold: float
) -> np.ndarray | None:
    """The mask logits :func:`apply_annotator_argmax` needs from one expression, or ``None``.

    Args:
        scores: ``[T, N]`` sigmoid scores.
        mask_logits: ``[T, N, h, w]`` mask logits (numpy array or torch tensor on any device).
    Returns:
        ``[T, h, w] float32`` logits of the answer's query when the rule merges annotators;
        ``None`` for other rules (nothing to keep).
    """
    rule = get_answer_rule(answer)
    if not rule.annotator_argmax:
        return None
    chosen = rule.select(scores, obj_threshold)
    if chosen.size != 1:
        raise ValueError(
            f"answer rule {answer!r} merges annotators but chose {chosen.size} queries"
        )
    logits = mask_logits[:, int(chosen[0])]
    if hasattr(logits, "cpu"):  # a torch tensor, possibly on a GPU
        logits = logits.cpu()
    return np.asarray(logits, dtype=np.float32)


def annotator_argmax(
    logits: Sequence[np.ndarray], frame_size: tuple[int, int], *, frames_per_chunk: int = 8
) -> list[RunLengthMasks]:
    """One annotator's objects share their pixels as ReferDINO's Ref-DAVIS17 inference merges them.

    Each object's soft mask is ``sigmoid(bilinear(logits))`` at frame size, zeroed below
    :data:`MERGE_MIN_PROBABILITY`; a pixel goes to the object with the highest value, or to the
    background when none exceeds :data:`MERGE_BACKGROUND_SCORE` (the first object wins ties, as
    ``argmax`` does).

    Args:
        logits: per object in label order, ``[T, h, w]`` mask logits of its answer query.
        frame_size: ``(H, W)``.
    Returns:
        per object, ``[T, H, W]`` masks of the pixels it wins (disjoint).
    """
    import torch  # only this helper and the upsampling need torch
    import torch.nn.functional as F

    stacked = torch.as_tensor(np.stack(logits, axis=1)).float()  # [T, n, h, w]
    parts: list[list[RunLengthMasks]] = [[] for _ in logits]
    for start in range(0, stacked.shape[0], frames_per_chunk):
        chunk = stacked[start : start + frames_per_chunk]
        probs = F.interpolate(chunk, size=frame_size, mode="bilinear", align_corners=False)
        probs = probs.sigmoid()
        probs[probs < MERGE_MIN_PROBABILITY] = 0.0
        background = torch.full_like(probs[:, :1], MERGE_BACKGROUND_SCORE)
        labels = torch.cat([background, probs], dim=1).argmax(dim=1).numpy()  # [t, H, W]
        for obj_idx, obj_parts in enumerate(parts):
            obj_parts.append(RunLengthMasks.encode(labels == obj_idx + 1))
    return [RunLengthMasks.concatenate(obj_parts) for obj_parts in parts]


def apply_annotator_argmax(
    record: Stage1Video,
    logits: Mapping[str, np.ndarray],
    video: Video,
    *,
    frames_per_chunk: int = 8,
) -> None:
    """Replace the answers of ``record`` by :func:`annotator_argmax` within each annotator.

    Args:
        record: the video's stage-1 record (changed in place).
        logits: ``exp_id -> [T, h, w]`` answer-query logits (:func:`answer_logits`).
        video: the split's video, whose expressions carry ``annotator`` and ``obj_idx``.
    Raises:
        DataError: the video's expressions have no annotators.
    """
    groups = video.annotator_groups()
    if not groups:
        raise DataError(f"video {video.video_id!r}: its expressions have no annotators to merge")
    frame_size = (record.height, record.width)
    for exp_ids in groups.values():
        merged = annotator_argmax(
            [logits[e] for e in exp_ids], frame_size, frames_per_chunk=frames_per_chunk
        )
        for exp_id, masks in zip(exp_ids, merged, strict=True):
            record.expressions[exp_id].answer = masks


def stage1_from_legacy(
    legacy: LegacyVideo,
    video: Video,
    *,
    obj_threshold: float,
    answer: str = THRESHOLD_OR_TOP1,
) -> Stage1Video:
    """Convert a ReferDINO-Plus legacy file to a stage-1 record, keeping all of its queries.

    Args:
        legacy: the file's contents.
        video: the split's video (frame list; annotators for a rule that merges them).
        obj_threshold: threshold of the answer rule.
        answer: the answer rule's name.
    Raises:
        ValueError: its frame count differs from the split's frame list.
    """
    frame_names = list(video.frame_names)
    height, width = legacy.size
    record = Stage1Video(
        video_id=legacy.video_id, frame_names=frame_names, height=height, width=width
    )
    merge_logits: dict[str, np.ndarray] = {}
    for exp_id, arrays in legacy.expressions.items():
        if arrays["scores"].shape[0] != len(frame_names):
            raise ValueError(
                f"legacy video {legacy.video_id!r}, expression {exp_id!r}: "
                f"{arrays['scores'].shape[0]} frames, the split lists {len(frame_names)}"
            )
        # All queries in the file's order: stage 2 indexes them as the original script did.
        record.expressions[exp_id] = proposals_from_query_masks(
            arrays["scores"],
            arrays["boxes"],
            encode_mask_logits(arrays["masks"], (height, width)),
            top_k=None,
            obj_threshold=obj_threshold,
            answer=answer,
        )
        logits = answer_logits(
            arrays["scores"], arrays["masks"], answer=answer, obj_threshold=obj_threshold
        )
        if logits is not None:
            merge_logits[exp_id] = logits
    if merge_logits:
        missing = [e for e in video.expressions if e not in merge_logits]
        if missing:
            raise ValueError(
                f"legacy video {legacy.video_id!r}: no outputs for expression(s) {missing}"
            )
        apply_annotator_argmax(record, merge_logits, video)
    return record


@dataclass(frozen=True)
class Stage1Records:
    """Where a run's stage-1 records are, and how to make one from a legacy file.

    Attributes:
        work_dir: the run's ``work_dir`` (records in ``work_dir/stage1/<video>.npz``).
        fingerprint: the configuration fingerprint a usable record carries.
        legacy_dir: a folder of ReferDINO-Plus ``<video>.npz`` to import instead of running a
            stage-1 model (``stage1.legacy_dir``), or ``None``.
        obj_threshold: threshold of the stage-1 answer of imported files (``stage1.obj_threshold``).
        answer: the answer rule of imported files (``data.answer``).
    """

    work_dir: Path
    fingerprint: str
    legacy_dir: Path | None
    obj_threshold: float
    answer: str

    def path(self, video_id: str) -> Path:
        return im.stage_path(self.work_dir, 1, video_id)

    def import_legacy(self, split: Split, video_id: str) -> None:
        """Convert ``legacy_dir/<video_id>.npz`` into a record (all of its queries kept).

        Raises:
            DataError: the file's frames disagree with the split's list (or it is unreadable:
                :class:`~rvos.legacy.LegacyFormatError`, a ``ValueError``).
        """
        assert self.legacy_dir is not None
        legacy = read_legacy_npz(Path(self.legacy_dir) / f"{video_id}.npz")
        try:
            record = stage1_from_legacy(
                legacy,
                split.videos[video_id],
                obj_threshold=self.obj_threshold,
                answer=self.answer,
            )
        except ValueError as err:
            raise DataError(str(err)) from None
        im.save_stage1(self.path(video_id), record, fingerprint=self.fingerprint)

    def load(self, split: Split, video_id: str) -> Stage1Video:
        """The video's record, its expressions in the split's order; with
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
                f"frames, the split lists {video.num_frames}: recompute stage 1"
            )
        missing = [e for e in video.expressions if e not in record.expressions]
        if missing:
            raise DataError(f"video {video_id!r}: stage-1 outputs miss expression(s) {missing}")
        record.expressions = {e: record.expressions[e] for e in video.expressions}
        return record
