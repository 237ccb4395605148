"""What a metric returns: the scores of an archive, their JSON and their table.

Every metric (:data:`rvos.evaluation.METRICS`) returns a :class:`BenchmarkResult`; scores are
fractions in ``[0, 1]``, tables show percentages with two decimals, like the leaderboards.

- MeViS (:class:`EvaluationResult`): J and F per expression (:class:`ExpressionScore`), averaged
  over expressions; ``J&F = (J + F) / 2``.
- MeViS v2 (:class:`MevisV2Result`) adds, beside J, F and J&F over all expressions:

  - ``N-acc``: no-target expressions answered with empty masks on every frame / no-target
    expressions;
  - ``T-acc``: target expressions answered with a non-empty mask on some frame / target
    expressions;
  - ``J&F-T``: J&F over the target expressions only.

  A missing video or expression counts as a wrong answer for both accuracies.
- Ref-DAVIS17 (:class:`DavisResult`): the DAVIS 2017 statistics (Mean, Recall, Decay of J and
  of F) per ground-truth object (:class:`ObjectScore`), per annotator (:class:`AnnotatorScore`),
  averaged over the annotators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rvos.archive_reader import UnexpectedMembers
from rvos.davis import annotator_dir
from rvos.metrics import mean_scores


class BenchmarkResult(Protocol):
    """What every metric returns (:data:`rvos.evaluation.METRICS`); scores are fractions in ``[0, 1]``."""

    @property
    def jf(self) -> float: ...

    @property
    def per_expression(self) -> Mapping[tuple[str, str], Any]:
        """``(video_id, key) -> score`` with a ``jf`` attribute, one per scored unit (an
        expression; Ref-DAVIS17: an annotator's object), for the J&F-per-video plot."""
        ...

    @property
    def unexpected(self) -> UnexpectedMembers:
        """The prediction's members its layout does not ask for (not scored)."""
        ...

    def summary(self) -> dict[str, float]:
        """The headline scores: ``J``, ``F`` and ``J&F`` first, then the metric's own."""
        ...

    def to_json(self) -> dict:
        """The scores, and ``unexpected_members``: ``{"count", "names"}``."""
        ...

    def format_table(self) -> str:
        """The scores in percent, as the benchmark's leaderboard shows them."""
        ...


# ----------------------------------------------------------------------------- MeViS


@dataclass(frozen=True)
class ExpressionScore:
    """Scores of one expression.

    Attributes:
        j: mean region similarity over the frames, in ``[0, 1]``.
        f: mean boundary F-measure over the frames, in ``[0, 1]``.
        status: ``"ok"``, ``"missing_video"`` or ``"missing_expression"`` (both score 0).
        missing_frames: frame names without a PNG, scored as empty predictions.
        has_foreground: whether the prediction has a foreground pixel on some frame.
    """

    j: float
    f: float
    status: str = "ok"
    missing_frames: tuple[str, ...] = ()
    has_foreground: bool = False

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass(frozen=True)
class EvaluationResult:
    """J, F and J&F of a prediction archive (fractions in ``[0, 1]``).

    ``per_expression`` maps ``(video_id, exp_id)`` to its score, in ``meta_expressions.json``
    order; ``unexpected`` counts the archive's members that no expression's frame asks for.
    """

    j: float
    f: float
    jf: float
    per_expression: dict[tuple[str, str], ExpressionScore] = field(repr=False)
    unexpected: UnexpectedMembers

    def count(self, status: str) -> int:
        """Number of expressions with the given ``status``."""
        return sum(score.status == status for score in self.per_expression.values())

    def missing_videos(self) -> list[str]:
        """Ids of the videos absent from the prediction."""
        missing = (v for (v, _), s in self.per_expression.items() if s.status == "missing_video")
        return list(dict.fromkeys(missing))

    def to_json(self) -> dict:
        """JSON-ready totals and ``{video_id: {exp_id: {...}}}`` scores."""
        videos: dict[str, dict[str, dict]] = {}
        for (video_id, exp_id), score in self.per_expression.items():
            videos.setdefault(video_id, {})[exp_id] = {
                "J": score.j,
                "F": score.f,
                "J&F": score.jf,
                "status": score.status,
                "missing_frames": list(score.missing_frames),
            }
        return {
            "J": self.j,
            "F": self.f,
            "J&F": self.jf,
            "num_expressions": len(self.per_expression),
            "num_missing_videos": len(self.missing_videos()),
            "num_missing_expressions": self.count("missing_expression"),
            "unexpected_members": self.unexpected.to_json(),
            "per_expression": videos,
        }

    def summary(self) -> dict[str, float]:
        """``{"J", "F", "J&F"}`` (fractions)."""
        return {"J": self.j, "F": self.f, "J&F": self.jf}

    def format_table(self) -> str:
        """J, F and J&F in percent."""
        return format_summary(self.summary())


@dataclass(frozen=True)
class MevisV2Result:
    """MeViS v2 scores: J, F and J&F over all expressions, the no-target and target accuracies,
    and J&F over the target expressions.

    Attributes:
        scores: the J and F of every expression (no-target ones included).
        targets: ``(video_id, exp_id) -> whether the expression refers to something``.
    """

    scores: EvaluationResult
    targets: dict[tuple[str, str], bool] = field(repr=False)

    @property
    def jf(self) -> float:
        return self.scores.jf

    @property
    def per_expression(self) -> dict[tuple[str, str], ExpressionScore]:
        return self.scores.per_expression

    @property
    def unexpected(self) -> UnexpectedMembers:
        return self.scores.unexpected

    def accuracies(self) -> dict[str, float]:
        """``N-acc``, ``T-acc`` and ``J&F-T``; a key is left out when its set is empty."""
        per_expression = self.scores.per_expression
        no_target = [key for key, is_target in self.targets.items() if not is_target]
        target = [key for key, is_target in self.targets.items() if is_target]
        result = {}
        if no_target:
            right = [
                per_expression[key].status == "ok" and not per_expression[key].has_foreground
                for key in no_target
            ]
            result["N-acc"] = sum(right) / len(no_target)
        if target:
            right = [
                per_expression[key].status == "ok" and per_expression[key].has_foreground
                for key in target
            ]
            result["T-acc"] = sum(right) / len(target)
            j, f = mean_scores([(per_expression[k].j, per_expression[k].f) for k in target])
            result["J&F-T"] = (j + f) / 2
        return result

    def summary(self) -> dict[str, float]:
        return {**self.scores.summary(), **self.accuracies()}

    def to_json(self) -> dict:
        """:meth:`EvaluationResult.to_json` plus the accuracies, the number of no-target
        expressions and, per expression, whether it has a target and a non-empty prediction."""
        data = {**self.scores.to_json(), **self.accuracies()}
        data["num_no_target"] = sum(not is_target for is_target in self.targets.values())
        for (video_id, exp_id), score in self.scores.per_expression.items():
            entry = data["per_expression"][video_id][exp_id]
            entry["target"] = self.targets[(video_id, exp_id)]
            entry["predicted_foreground"] = score.has_foreground
        return data

    def format_table(self) -> str:
        return format_summary(self.summary())


# ----------------------------------------------------------------------------- Ref-DAVIS17


# Statistics of one annotator (and of the average), in the order of eval_davis.py's table.
STATISTICS = ("J&F", "J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScore:
    """Statistics of one ground-truth object (fractions), see
    :func:`rvos.davis_metric.statistics`."""

    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def jf(self) -> float:
        return (self.j_mean + self.f_mean) / 2


@dataclass(frozen=True)
class AnnotatorScore:
    """One annotator's evaluation: ``per_object`` maps ``(video_id, gt object id)`` (ids from 1)
    to its statistics; ``missing_frames`` counts prediction PNGs scored as empty."""

    per_object: dict[tuple[str, int], ObjectScore] = field(repr=False)
    missing_frames: int

    def summary(self) -> dict[str, float]:
        """``eval_davis.py``'s global row: each statistic averaged over all objects."""
        scores = list(self.per_object.values())
        if not scores:
            raise ValueError("no ground-truth object to average")
        means = {
            name: float(np.mean([getattr(s, attr) for s in scores]))
            for name, attr in (
                ("J", "j_mean"),
                ("J-Recall", "j_recall"),
                ("J-Decay", "j_decay"),
                ("F", "f_mean"),
                ("F-Recall", "f_recall"),
                ("F-Decay", "f_decay"),
            )
        }
        return {"J&F": (means["J"] + means["F"]) / 2, **means}


@dataclass(frozen=True)
class DavisResult:
    """The Ref-DAVIS17 score: the DAVIS 2017 unsupervised statistics per annotator, averaged;
    ``unexpected`` counts the archive's members that no annotator's frame asks for."""

    annotators: dict[int, AnnotatorScore]
    unexpected: UnexpectedMembers

    def summary(self) -> dict[str, float]:
        """Each statistic averaged over the annotators (fractions; ``J`` is J-Mean)."""
        rows = [a.summary() for a in self.annotators.values()]
        return {name: float(np.mean([row[name] for row in rows])) for name in STATISTICS}

    @property
    def jf(self) -> float:
        return self.summary()["J&F"]

    @property
    def per_expression(self) -> dict[tuple[str, str], ObjectScore]:
        """``(video_id, "anno_<k>/<gt object id>") -> statistics``: one entry per annotator and
        ground-truth object, the unit one expression is scored as."""
        return {
            (video_id, f"{annotator_dir(k)}/{obj_id}"): score
            for k, annotator in self.annotators.items()
            for (video_id, obj_id), score in annotator.per_object.items()
        }

    def to_json(self) -> dict:
        """JSON-ready averages, per-annotator rows and per-object statistics."""
        per_annotator = {}
        for k, annotator in self.annotators.items():
            objects: dict[str, dict[str, dict[str, float]]] = {}
            for (video_id, obj_id), s in annotator.per_object.items():
                objects.setdefault(video_id, {})[str(obj_id)] = {
                    "J": s.j_mean,
                    "J-Recall": s.j_recall,
                    "J-Decay": s.j_decay,
                    "F": s.f_mean,
                    "F-Recall": s.f_recall,
                    "F-Decay": s.f_decay,
                }
            per_annotator[annotator_dir(k)] = {
                **annotator.summary(),
                "missing_frames": annotator.missing_frames,
                "per_object": objects,
            }
        return {
            **self.summary(),
            "unexpected_members": self.unexpected.to_json(),
            "annotators": per_annotator,
        }

    def format_table(self) -> str:
        """Rows ``anno_<k>`` and ``avg`` of the statistics in percent, as ``eval_davis.py``."""
        lines = [f"{'':<8}" + "".join(f"{name:>10}" for name in STATISTICS)]
        rows = [(annotator_dir(k), a.summary()) for k, a in self.annotators.items()]
        for label, row in [*rows, ("avg", self.summary())]:
            lines.append(f"{label:<8}" + "".join(f"{100 * row[n]:>10.2f}" for n in STATISTICS))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- tables


def format_summary(summary: Mapping[str, float]) -> str:
    """Two lines: the score names and their values in percent with two decimals."""
    header = " ".join(f"{name:>7}" for name in summary)
    values = " ".join(f"{100 * value:7.2f}" for value in summary.values())
    return f"{header}\n{values}"
