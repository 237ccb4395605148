"""Score a prediction archive against a split's ground truth (MeViS: J, F and J&F).

Usage::

    python -m stage3_fusion.evaluate PRED --data-root DIR [--json OUT] [--jobs N]
                                     [--layout mevis] [--metric mevis]

``PRED`` is a zip file or a folder holding ``<video_id>/<exp_id>/<frame_name>.png`` at its top
level; ``DIR`` a split with ``meta_expressions.json`` and ``mask_dict.json``. The metric and its
edge cases: :mod:`rvos.evaluation`. Prints J, F and J&F in percent; ``--json`` writes the
fractions and the per-expression scores.

Other benchmarks: ``--metric mevis_v2`` adds MeViS v2's no-target and target accuracies;
``--layout ref_davis17 --metric davis17`` scores ``anno_<k>/<video>/<frame>.png`` with the DAVIS
2017 unsupervised protocol per annotator (:mod:`rvos.davis`), ``DIR`` being the Ref-DAVIS17 folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rvos.evaluation import METRICS, evaluate
from rvos.metrics import DEFAULT_BOUND_TH
from rvos.splits import SPLIT_LAYOUTS, DataError, Split

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stage3_fusion.evaluate",
        description="Official MeViS J&F (or another benchmark's metric) of a prediction archive "
        "(zip or folder).",
    )
    parser.add_argument("pred", type=Path, help="zip or folder of <video>/<exp_id>/<frame>.png")
    parser.add_argument(
        "--data-root",
        type=Path,
        required=True,
        help="split with meta_expressions.json and mask_dict.json (or, with --layout, that "
        "layout's folder)",
    )
    parser.add_argument(
        "--layout",
        default="mevis",
        choices=sorted(SPLIT_LAYOUTS),
        help="file layout of the split (data.layout; default: mevis)",
    )
    parser.add_argument(
        "--metric",
        default="mevis",
        choices=sorted(METRICS),
        help="mevis (J, F, J&F), mevis_v2 (+ no-target and target accuracies) or davis17 "
        "(default: mevis)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write totals and per-expression scores here"
    )
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (-1: all cores)")
    parser.add_argument(
        "--bound-th",
        type=float,
        default=DEFAULT_BOUND_TH,
        help="boundary tolerance of F, a fraction of the image diagonal (the official metric's)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
