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
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from rvos.davis_metric import evaluate_davis17
from rvos.metrics import DEFAULT_BOUND_TH
from rvos.mevis_metric import evaluate_mevis, evaluate_mevis_v2
from rvos.registry import Registry
from rvos.scores import BenchmarkResult
from rvos.splits import SPLIT_LAYOUTS, DataError, Split

logger = logging.getLogger(__name__)

# (pred, split, *, jobs, bound_th, progress) -> result
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
) -> BenchmarkResult:
    """Score ``pred`` on ``split`` with the metric registered as ``metric``.

    Raises:
        ValueError: an unknown metric (listing the known ones), or the metric's own errors.
    """
    return METRICS.lookup(metric)(pred, split, jobs=jobs, bound_th=bound_th, progress=progress)


# ----------------------------------------------------------------------------- command line

# The standalone command's split when --layout/--metric/--jobs are not given: a MeViS split,
# scored on all cores.
STANDALONE = {"layout": "mevis", "metric": "mevis", "jobs": -1}


def build_parser(prog: str, *, standalone: bool) -> argparse.ArgumentParser:
    """The evaluator's arguments: ``pred``, ``data_root``, ``layout``, ``metric``, ``json``,
    ``jobs`` and ``bound_th``.

    Args:
        prog: the command, for the usage line.
        standalone: ``--data-root`` is required and ``layout``, ``metric`` and ``jobs`` default
            to :data:`STANDALONE`; otherwise those four are ``None`` unless given, for the
            caller to take from the benchmark's configuration.
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
        parser.set_defaults(**STANDALONE)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` on the split ``args.data_root`` (layout ``args.layout``) with
    ``args.metric``; print the table, write ``args.json`` when set.

    Returns:
        The exit status: 0, or 1 after one logged line for a missing or unreadable prediction
        or ground truth.
    """
    try:
        split = Split(args.data_root, args.layout)
        result = evaluate(args.metric, args.pred, split, jobs=args.jobs, bound_th=args.bound_th)
    except (FileNotFoundError, ValueError, DataError) as err:
        logger.error("%s", err)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=1))
        logger.info("scores written to %s", args.json)
    print(result.format_table())
    return 0
