"""What a sweep reports (:mod:`referdino_plus.sweep`): the table of its points' scores (printed, and
written as CSV and JSON), a plot of J&F against each swept key, and the best point as the command
line that runs it on the benchmark's splits for submission.

Scores are fractions in the files and percentages with two decimals in the table and the plot,
as the leaderboards show them.
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from referdino_plus.config import CONFIG_DIR
from referdino_plus.sweep import PointResult, SweepPlan
from rvos import io as rvos_io
from rvos.io import atomic_output

HEADLINE = "J&F"  # the score that ranks the points
# The table's first score columns; a metric's other scores (MeViS v2: N-acc, T-acc, J&F-T) follow.
FIRST_SCORES = ("J&F", "J", "F")
# A labelled split's benchmark is named <benchmark>_valid_u; its splits for submission are the
# benchmarks named <benchmark> + each of these, where configs/data/ has them.
LABELLED_SUFFIX = "_valid_u"
SUBMISSION_SUFFIXES = ("_valid", "_test")
# Keys of the sweep's overrides that choose the split and the run's folders: the command line
# of the best point sets its own.
PLACE_KEYS = ("data", "data.root", "name", "work_dir", "submission_dir")
# The plot: inches per swept key (one panel each, side by side), height, resolution.
PLOT_PANEL_INCHES = 4.0
PLOT_HEIGHT_INCHES = 3.6
PLOT_DPI = 100


def score_columns(results: Sequence[PointResult]) -> list[str]:
    """:data:`FIRST_SCORES`, then every other score the points have, in their order."""
    others = (k for r in results for k in r.scores if k not in FIRST_SCORES)
    return list(dict.fromkeys([*FIRST_SCORES, *others]))


def best_result(results: Sequence[PointResult]) -> PointResult:
    """The point with the highest J&F (the first one of a tie)."""
    return max(results, key=lambda r: r.scores[HEADLINE])


def format_table(plan: SweepPlan, results: Sequence[PointResult]) -> str:
    """The points, one row each: the swept values, then the scores in percent; the best
    point's row starts with ``*``."""
    columns = score_columns(results)
    best = best_result(results)
    header = ["point", *plan.keys, *columns]
    rows = [
        [
            f"{'*' if r is best else ''}{r.point.index}",
            *(r.point.values[k] for k in plan.keys),
            *(f"{100 * r.scores[c]:.2f}" if c in r.scores else "-" for c in columns),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    head = "  ".join(cell.rjust(width) for cell, width in zip(header, widths, strict=True))
    return "\n".join([head, *lines])


def best_commands(
    plan: SweepPlan, best: PointResult, flags: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """``[(split, command line)]`` that run the best point: on each split for submission of the
    sweep's benchmark (:func:`submission_benchmarks`), ``data=`` swapped and a run name of its
    own; on the sweep's own split when it has none. ``flags``: the sweep's device flags
    (``--gids 0 1``), kept."""
    benchmark = sweep_benchmark(plan.fixed)
    targets = submission_benchmarks(benchmark) if not _has_key(plan.fixed, "data.root") else []
    kept = [o for o in plan.fixed if _key(o) not in PLACE_KEYS]
    if not targets:
        own = [o for o in plan.fixed if _key(o) not in ("name", "work_dir", "submission_dir")]
        words = [*flags, "--name", f"{plan.base.name}-best", *own, *best.point.overrides]
        return [(str(plan.split.root), _command(words))]
    return [
        (
            target,
            _command(
                [*flags, f"data={target}", "--name", f"{plan.base.name}-{target}", *kept]
                + best.point.overrides
            ),
        )
        for target in targets
    ]


def _command(words: Sequence[str]) -> str:
    return " ".join(["python", "run_pipeline.py", *(shlex.quote(w) for w in words)])


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _has_key(overrides: Sequence[str], key: str) -> bool:
    return any(_key(o) == key for o in overrides)


def sweep_benchmark(fixed: Sequence[str]) -> str:
    """The ``data=`` benchmark of the sweep: the last one given, else ``pipeline.yaml``'s."""
    given = [o.partition("=")[2] for o in fixed if _key(o) == "data"]
    if given:
        return given[-1]
    pipeline = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "pipeline.yaml"))
    assert isinstance(pipeline, dict)
    defaults = pipeline.get("defaults", [])
    return next(str(d["data"]) for d in defaults if isinstance(d, dict) and "data" in d)


def submission_benchmarks(benchmark: str) -> list[str]:
    """The splits for submission of a labelled benchmark (:data:`LABELLED_SUFFIX`) that
    ``configs/data/`` has: ``mevis_valid_u`` -> ``mevis_valid``, ``mevis_test``."""
    if not benchmark.endswith(LABELLED_SUFFIX):
        return []
    stem = benchmark[: -len(LABELLED_SUFFIX)]
    names = [stem + suffix for suffix in SUBMISSION_SUFFIXES]
    return [name for name in names if (CONFIG_DIR / "data" / f"{name}.yaml").is_file()]


# ----------------------------------------------------------------------------- files


def table_rows(plan: SweepPlan, results: Sequence[PointResult]) -> list[dict[str, Any]]:
    """One plain row per point: its number, swept values, scores (fractions), fingerprint and
    folder."""
    columns = score_columns(results)
    return [
        {
            "point": r.point.index,
            **{k: r.point.values[k] for k in plan.keys},
            **{c: r.scores.get(c) for c in columns},
            "fingerprint": r.point.fingerprint,
            "archive": str(r.archive),
        }
        for r in results
    ]


def write_csv(path: Path, plan: SweepPlan, results: Sequence[PointResult]) -> Path:
    """The table as CSV (scores as fractions; an empty cell where a point lacks one)."""
    rows = table_rows(plan, results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(text.getvalue())
    return path


def write_json(
    path: Path,
    plan: SweepPlan,
    results: Sequence[PointResult],
    commands: Sequence[tuple[str, str]],
) -> Path:
    """The sweep as JSON: its split, metric, fixed overrides and swept keys, the points' rows
    (:func:`table_rows`), and the best point with its command lines."""
    best = best_result(results)
    document = {
        "data_root": str(plan.split.root),
        "metric": plan.base.data.metric,
        "fixed": plan.fixed,
        "keys": plan.keys,
        "points": table_rows(plan, results),
        "best": {
            "point": best.point.index,
            "values": best.point.values,
            "scores": best.scores,
            "commands": {split: command for split, command in commands},
        },
    }
    rvos_io.write_json(path, document)
    return path


def plot_size(num_keys: int) -> tuple[int, int]:
    """``(width, height)`` in px of :func:`plot_sweep` for ``num_keys`` swept keys."""
    return round(PLOT_PANEL_INCHES * num_keys * PLOT_DPI), round(PLOT_HEIGHT_INCHES * PLOT_DPI)


def plot_sweep(path: Path, plan: SweepPlan, results: Sequence[PointResult]) -> Path:
    """J&F (percent) against each swept key, one panel per key: every point as a dot, the best
    J&F at each value joined by a line, the best point ringed. Values are placed by number when
    all of a key's values are numbers, else in the sweep's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = plot_size(len(plan.keys))
    fig, axes = plt.subplots(1, len(plan.keys), figsize=(width / PLOT_DPI, height / PLOT_DPI))
    axes = [axes] if len(plan.keys) == 1 else list(axes)
    best = best_result(results)
    try:
        for ax, key in zip(axes, plan.keys, strict=True):
            values = list(dict.fromkeys(r.point.values[key] for r in results))
            where = _positions(values)
            xs = [where[r.point.values[key]] for r in results]
            ys = [100 * r.scores[HEADLINE] for r in results]
            ax.scatter(xs, ys, s=18, alpha=0.6, label="points")
            tops = [max(y for x, y in zip(xs, ys, strict=True) if x == where[v]) for v in values]
            order = sorted(range(len(values)), key=lambda i: where[values[i]])
            ax.plot([where[values[i]] for i in order], [tops[i] for i in order], label="best")
            ax.scatter(
                [where[best.point.values[key]]], [100 * best.scores[HEADLINE]],
                s=90, facecolors="none", edgecolors="black", label="best point",
            )  # fmt: skip
            if not all(_number(v) is not None for v in values):
                ax.set_xticks(list(where.values()), list(where), rotation=30, fontsize=8)
            ax.set_xlabel(key)
            ax.set_ylabel("J&F (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=PLOT_DPI)
    finally:
        plt.close(fig)
    return path


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positions(values: Sequence[str]) -> dict[str, float]:
    """Where each value sits on its axis: itself when all are numbers, else its place."""
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        return {v: float(n) for v, n in zip(values, numbers, strict=True)}  # type: ignore[arg-type]
    return {v: float(i) for i, v in enumerate(values)}


def write_report(
    folder: Path,
    plan: SweepPlan,
    results: Sequence[PointResult],
    commands: Sequence[tuple[str, str]],
) -> dict[str, Path]:
    """``sweep.csv``, ``sweep.json`` and ``sweep.png`` in ``folder``; returns them by kind."""
    return {
        "csv": write_csv(folder / "sweep.csv", plan, results),
        "json": write_json(folder / "sweep.json", plan, results, commands),
        "png": plot_sweep(folder / "sweep.png", plan, results),
    }
