"""Score a MeViS-layout prediction archive against a split's ground truth (J, F and J&F).

Usage::

    python -m stage3_fusion.evaluate PRED --data-root DIR [--json OUT] [--jobs N]

``PRED`` is a zip file or a folder holding ``<video_id>/<exp_id>/<frame_name>.png`` at its top
level; ``DIR`` a split with ``meta_expressions.json`` and ``mask_dict.json``. The metric and its
edge cases: :mod:`rvos.evaluation`. Prints J, F and J&F in percent; ``--json`` writes the
fractions and the per-expression scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rvos.evaluation import evaluate_archive, format_table
from rvos.metrics import DEFAULT_BOUND_TH

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stage3_fusion.evaluate",
        description="Official MeViS J&F of a prediction archive (zip or folder).",
    )
    parser.add_argument("pred", type=Path, help="zip or folder of <video>/<exp_id>/<frame>.png")
    parser.add_argument(
        "--data-root",
        type=Path,
        required=True,
        help="split with meta_expressions.json and mask_dict.json",
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
        result = evaluate_archive(args.pred, args.data_root, jobs=args.jobs, bound_th=args.bound_th)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=1))
        logger.info("scores written to %s", args.json)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
