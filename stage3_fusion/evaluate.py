"""``python -m stage3_fusion.evaluate``: the evaluator of :mod:`rvos.evaluation`, standalone.

Usage::

    python -m stage3_fusion.evaluate PRED --data-root DIR [--json OUT] [--jobs N]
                                     [--layout mevis] [--metric mevis]
                                     [evaluation.limits.KEY=VALUE ...]

``PRED`` is a zip file or a folder holding ``<video_id>/<exp_id>/<frame_name>.png`` at its top
level; ``DIR`` a split with ``meta_expressions.json`` and ``mask_dict.json``. Prints J, F and J&F
in percent; ``--json`` writes the fractions and the per-expression scores. Other benchmarks:
``--metric mevis_v2``; ``--layout ref_davis17 --metric davis17`` with ``DIR`` the Ref-DAVIS17
folder. ``evaluation.limits.<key>=<value>`` words change the limits on what the archive may hold
(defaults: ``configs/pipeline.yaml``). ``referdino-plus evaluate PRED data=<benchmark>`` is the
same evaluator taking the benchmark by name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from rvos.evaluation import build_parser, run, standalone_limits

PROG = "python -m stage3_fusion.evaluate"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(PROG, standalone=True).parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return standalone_limits(args) or run(args)


if __name__ == "__main__":
    sys.exit(main())
