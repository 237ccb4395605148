"""Bad cases: the expressions a challenge team re-checks before submitting.

- **empty**: the final mask is empty on every frame (the expression answers nothing);
- **duplicate objects**: within one expression, two kept objects whose tracked masks have a mean
  IoU above a threshold: one object prompted twice. The IoU is averaged over the frames where
  either mask has a pixel (two masks empty on every frame are not compared);
- **spatial words**: the sentence holds one of a list of words or phrases ("left", "right",
  "without", ...: whole words, any case), which models often get wrong;
- **worst**: with ground truth, the expressions (Ref-DAVIS17: annotators' objects) with the lowest
  J&F.

The checks work on runs (:class:`~rvos.masks.RunLengthMasks`): nothing is decoded at frame size.
:class:`BadCases` holds what they find, for ``report.json``, a run's summary and the pictures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rvos.masks import RunLengthMasks

# ----------------------------------------------------------------------------- the checks


def mask_areas(masks: RunLengthMasks) -> np.ndarray:
    """``[*lead] int64``: the foreground pixels of every mask, counted on the runs."""
    lengths = np.diff(masks.offsets)
    owner = np.repeat(np.arange(masks.num_masks), lengths)
    position = np.arange(masks.counts.size) - np.repeat(masks.offsets[:-1], lengths)
    foreground = position % 2 == 1  # runs alternate, background first
    areas = np.bincount(
        owner[foreground], weights=masks.counts[foreground], minlength=masks.num_masks
    )
    return areas.astype(np.int64).reshape(masks.lead_shape)


def mean_iou(first: RunLengthMasks, second: RunLengthMasks) -> float | None:
    """Mean IoU of two ``[T, H, W]`` stacks over the frames where either has a pixel; ``None``
    when both are empty on every frame."""
    union = mask_areas(first.union_with(second))
    both = mask_areas(first) + mask_areas(second) - union
    frames = union > 0
    if not frames.any():
        return None
    return float(np.mean(both[frames] / union[frames]))


def duplicate_objects(objects: RunLengthMasks, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs of objects whose masks overlap with a mean IoU above ``threshold``.

    Args:
        objects: ``[T, K, H, W]`` masks of ``K`` tracked objects.
        threshold: the mean IoU a pair must exceed.
    Returns:
        ``[(obj_idx, other obj_idx, mean IoU)]``, ``obj_idx < other``, in order.
    """
    count = objects.shape[1]
    single = [objects.select(obj_idx, axis=1) for obj_idx in range(count)]
    pairs = []
    for first in range(count):
        for second in range(first + 1, count):
            iou = mean_iou(single[first], single[second])
            if iou is not None and iou > threshold:
                pairs.append((first, second, iou))
    return pairs


def spatial_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern finding any of ``words`` (or phrases: spaces match any whitespace) as whole
    words, any case; ``None`` for no words."""
    alternatives = [r"\s+".join(map(re.escape, w.split())) for w in words if w.strip()]
    if not alternatives:
        return None
    # Longest first: "in front of" before "front".
    alternatives.sort(key=len, reverse=True)
    return re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE)


def spatial_words(text: str, pattern: re.Pattern[str] | None) -> tuple[str, ...]:
    """The words of ``pattern`` in ``text``, lower case, each once, in order of appearance."""
    if pattern is None:
        return ()
    found = (" ".join(match.group(0).lower().split()) for match in pattern.finditer(text))
    return tuple(dict.fromkeys(found))


def worst_scores(scores: Mapping[tuple[str, str], Any], count: int) -> list[ScoredExpression]:
    """The ``count`` lowest-J&F entries of ``{(video_id, key): score with .jf}``, lowest first
    (ties in id order)."""
    ranked = sorted(scores.items(), key=lambda item: (float(item[1].jf), item[0]))
    return [ScoredExpression(video_id, key, float(s.jf)) for (video_id, key), s in ranked[:count]]


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class DuplicateObjects:
    """Two kept objects of one expression that overlap (one object prompted twice).

    Attributes:
        objects: their indices among the expression's tracked objects.
        columns: their stage-1 columns (the queries that prompted them).
        prompt_frames: the frame each was prompted on.
        mean_iou: their masks' mean IoU.
    """

    video_id: str
    exp_id: str
    objects: tuple[int, int]
    columns: tuple[int, int]
    prompt_frames: tuple[int, int]
    mean_iou: float


@dataclass(frozen=True)
class SpatialExpression:
    video_id: str
    exp_id: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class ScoredExpression:
    """An expression's (Ref-DAVIS17: an annotator's object's) J&F."""

    video_id: str
    exp_id: str
    jf: float


@dataclass
class BadCases:
    """What the checks found, each list in split order (``worst``: lowest J&F first).

    Attributes:
        empty: ``(video_id, exp_id)`` of the expressions whose final mask is empty on every frame.
        duplicates: overlapping kept objects.
        spatial: expressions with spatial words.
        worst: with ground truth, the lowest-J&F expressions.
        settings: the settings used (``duplicate_iou``, ``worst``; ``shown``: entries of each
            kind :meth:`format` lists), for the report.
    """

    empty: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[DuplicateObjects] = field(default_factory=list)
    spatial: list[SpatialExpression] = field(default_factory=list)
    worst: list[ScoredExpression] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def reasons(self) -> dict[tuple[str, str], list[str]]:
        """``{(video_id, exp_id): [why, ...]}`` of every flagged expression, the empty ones
        first, then duplicated objects, worst scores and spatial words."""
        found: dict[tuple[str, str], list[str]] = {}
        for key in self.empty:
            found.setdefault(key, []).append("empty on every frame")
        for d in self.duplicates:
            found.setdefault((d.video_id, d.exp_id), []).append(
                f"objects {d.objects[0]} and {d.objects[1]} overlap (mean IoU {d.mean_iou:.2f})"
            )
        for s in self.worst:
            found.setdefault((s.video_id, s.exp_id), []).append(f"J&F {100 * s.jf:.1f}")
        for e in self.spatial:
            found.setdefault((e.video_id, e.exp_id), []).append(f"says {', '.join(e.words)}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "empty": [{"video_id": v, "exp_id": e} for v, e in self.empty],
            "duplicate_objects": [
                {
                    "video_id": d.video_id,
                    "exp_id": d.exp_id,
                    "objects": list(d.objects),
                    "stage1_columns": list(d.columns),
                    "prompt_frames": list(d.prompt_frames),
                    "mean_iou": d.mean_iou,
                }
                for d in self.duplicates
            ],
            "spatial_words": [
                {"video_id": s.video_id, "exp_id": s.exp_id, "words": list(s.words)}
                for s in self.spatial
            ],
            "worst": [
                {"video_id": s.video_id, "exp_id": s.exp_id, "J&F": s.jf} for s in self.worst
            ],
        }

    def format(self) -> str:
        """The summary printed after a run: a line per kind with its count and the first
        ``settings["shown"]`` entries (all without that setting)."""
        shown = int(self.settings.get("shown", len(self.reasons())))

        def line(title: str, entries: Sequence[str]) -> str:
            listed = ", ".join(entries[:shown]) + (" ..." if len(entries) > shown else "")
            return f"  {title}: {len(entries)}" + (f" ({listed})" if entries and shown else "")

        rows = [
            line("empty on every frame", [f"{v}/{e}" for v, e in self.empty]),
            line(
                "duplicated objects",
                [
                    f"{d.video_id}/{d.exp_id} {d.objects} IoU {d.mean_iou:.2f}"
                    for d in self.duplicates
                ],
            ),
            line(
                "spatial words",
                [f"{s.video_id}/{s.exp_id} ({'/'.join(s.words)})" for s in self.spatial],
            ),
        ]
        if self.worst:
            rows.append(
                line(
                    "lowest J&F", [f"{s.video_id}/{s.exp_id} {100 * s.jf:.1f}" for s in self.worst]
                )
            )
        return "\n".join(["bad cases:", *rows])
