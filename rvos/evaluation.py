"""The evaluator: score a prediction archive with the metric its benchmark names.

A metric is registered by name in :data:`METRICS` (``data.metric`` of ``configs/data/<name>.yaml``)
and returns a :class:`rvos.scores.BenchmarkResult`:

- ``mevis``: the official MeViS J, F and J&F (:mod:`rvos.mevis_metric`);
- ``mevis_v2``: the same plus MeViS v2's no-target and target accuracies;
- ``davis17``: the DAVIS 2017 unsupervised statistics per annotator (:mod:`rvos.davis_metric`).

The command line, :func:`build_parser` and :func:`run`, serves both ways of calling it:
``referdino-plus evaluate PRED [data=<benchmark>]`` (the application: the benchmark's
configuration supplies the split, its layout and its metric) and
``python -m stage3_fusion.evaluate PRED --data-root DIR`` (standalone: MeViS unless
``--layout``/``--metric`` say otherwise). It prints the scores in percent and, with ``--json``,
writes the fractions and the per-expression scores.

Archives may come from anyone: reading one is bounded by ``evaluation.limits``
(:mod:`rvos.archive_limits`, checked by :mod:`rvos.archive_reader`), given as
``evaluation.limits.<key>=<value>`` on either command line. A damaged archive or member, or one
over a limit, is one line naming it and exit status 1; members the layout does not ask for are
counted under the table and in the JSON (``unexpected_members``), not scored.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from rvos.archive_limits import SECTION, ArchiveLimits, limits_with_overrides
from rvos.davis_metric import evaluate_davis17
from rvos.io import write_json
from rvos.metrics import DEFAULT_BOUND_TH
from rvos.mevis_metric import evaluate_mevis, evaluate_mevis_v2
from rvos.options import OptionError
from rvos.registry import Registry
from rvos.scores import BenchmarkResult
from rvos.splits import SPLIT_LAYOUTS, DataError, Split

logger = logging.getLogger(__name__)

# (pred, split, *, jobs, bound_th, progress, limits) -> result
Metric = Callable[..., BenchmarkResult]
# data.metric -> metric. Add an entry for another benchmark's metric.
METRICS: Registry[Metric] = Registry(
    "metric",
    {
        "mevis": evaluate_mevis,
        "mevis_v2": evaluate_mevis_v2,
        "davis17": evaluate_davis17,
    },
)


def evaluate(
    metric: str,
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> BenchmarkResult:
    """Score ``pred`` on ``split`` with the metric registered as ``metric``, reading ``pred``
    within ``limits`` (``None``: ``evaluation.limits`` of ``configs/pipeline.yaml``).

    Raises:
        ValueError: an unknown metric (listing the known ones), or the metric's own errors
            (among them :class:`rvos.archive_reader.ArchiveError`).
    """
    return METRICS.lookup(metric)(
        pred, split, jobs=jobs, bound_th=bound_th, progress=progress, limits=limits
    )


# ----------------------------------------------------------------------------- command line

# The standalone command's split when --layout/--metric/--jobs are not given: a MeViS split,
# scored on all cores.
STANDALONE = {"layout": "mevis", "metric": "mevis", "jobs": -1}


def build_parser(prog: str, *, standalone: bool) -> argparse.ArgumentParser:
    """The evaluator's arguments: ``pred``, ``data_root``, ``layout``, ``metric``, ``json``,
    ``jobs`` and ``bound_th``; standalone, also ``overrides`` (``evaluation.limits.<key>=<value>``
    words, for :func:`limits_with_overrides`). Parse with ``parse_intermixed_args``.

    Args:
        prog: the command, for the usage line.
        standalone: ``--data-root`` is required and ``layout``, ``metric`` and ``jobs`` default
            to :data:`STANDALONE`; otherwise those four are ``None`` unless given, for the
            caller to take from the benchmark's configuration (and ``limits`` too).
    """

    def default(dest: str, key: str) -> str:
        return (
            f"default: {STANDALONE[dest]}" if standalone else f"default: the configuration's {key}"
        )

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Official MeViS J&F (or another benchmark's metric) of a prediction archive "
        "(zip or folder).",
    )
    parser.add_argument("pred", type=Path, help="zip or folder of <video>/<exp_id>/<frame>.png")
    parser.add_argument(
        "--data-root",
        type=Path,
        required=standalone,
        help="split with meta_expressions.json and mask_dict.json (or, with --layout, that "
        "layout's folder)" + ("" if standalone else "; default: the configuration's data.root"),
    )
    parser.add_argument(
        "--layout",
        choices=sorted(SPLIT_LAYOUTS),
        help=f"file layout of the split ({default('layout', 'data.layout')})",
    )
    parser.add_argument(
        "--metric",
        choices=sorted(METRICS),
        help="mevis (J, F, J&F), mevis_v2 (+ no-target and target accuracies) or davis17 "
        f"({default('metric', 'data.metric')})",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write totals and per-expression scores here"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"worker processes, -1: all cores ({default('jobs', 'evaluation.jobs')})",
    )
    parser.add_argument(
        "--bound-th",
        type=float,
        default=DEFAULT_BOUND_TH,
        help="boundary tolerance of F, a fraction of the image diagonal (the official metric's)",
    )
    if standalone:
        parser.add_argument(
            "overrides",
            nargs="*",
            metavar=f"{SECTION}.KEY=VALUE",
            help="limits on what the archive may hold (defaults: configs/pipeline.yaml)",
        )
        parser.set_defaults(**STANDALONE)
    parser.set_defaults(limits=None)
    return parser


def standalone_limits(args: argparse.Namespace) -> int:
    """Set ``args.limits`` from the standalone command's ``overrides``; returns the exit status
    so far (0, or 2 after one logged line for a word that is not a limit or a bad value)."""
    try:
        args.limits = limits_with_overrides(args.overrides)
    except OptionError as err:
        logger.error("%s", err)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` on the split ``args.data_root`` (layout ``args.layout``) with
    ``args.metric``, within ``args.limits``; print the table (and, under it, the number of
    unexpected members if any), write ``args.json`` when set.

    Returns:
        The exit status: 0, or 1 after one logged line for a missing, damaged or refused
        prediction or an unreadable ground truth.
    """
    try:
        split = Split(args.data_root, args.layout)
        result = evaluate(
            args.metric,
            args.pred,
            split,
            jobs=args.jobs,
            bound_th=args.bound_th,
            limits=args.limits,
        )
    except (FileNotFoundError, ValueError, DataError) as err:
        logger.error("%s", err)
        return 1
    if args.json is not None:
        try:
            write_json(args.json, result.to_json())
        except OSError as err:
            logger.error("%s", err)
            return 1
        logger.info("scores written to %s", args.json)
    print(result.format_table())
    if result.unexpected.count:
        print(f"unexpected members (not scored): {result.unexpected.count}")
    return 0
