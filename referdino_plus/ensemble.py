"""``run_pipeline.py ensemble A.zip B.zip ... out=E.zip [weights=[2,1,1]] [data=<benchmark>]``:
submission archives of one split fused by pixel-wise weighted voting (:mod:`rvos.ensemble`).

Everything is checked before anything is written: the archives' layout (MeViS,
Ref-YouTube-VOS or Ref-DAVIS17, found from their folders; all the same), their videos,
expressions (or annotators), frames and frame sizes; the first difference is refused in one
line. Without a split the first archive is the reference; ``data=<benchmark>`` (or
``data.root=``) checks every archive against that split's metadata and archive layout
(``data.archive``) instead. ``weights=`` and ``out=`` are short for ``ensemble.weights=`` and
``ensemble.out=`` (``configs/pipeline.yaml``); ``weights=2,1,1`` reads as ``[2,1,1]``. The output
is written atomically by the pipeline's archive writer (``archive.jobs`` processes,
``archive.png_compress_level``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from referdino_plus.arguments import (
    add_overrides_argument,
    command_config,
    parse_with_overrides,
)
from referdino_plus.runtime import setup_logging

if TYPE_CHECKING:
    from referdino_plus.config import PipelineConfig

logger = logging.getLogger("referdino_plus")

# Words of the command line that are short for a key of configs/pipeline.yaml.
SHORT_KEYS = {"weights": "ensemble.weights", "out": "ensemble.out"}
WEIGHTS_KEY = SHORT_KEYS["weights"]
# The section of configs/pipeline.yaml that names a split (data=<benchmark>, data.root=...).
DATA_SECTION = "data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py ensemble",
        description="Fuse submission archives of one split by pixel-wise weighted voting: a "
        "pixel is foreground when the archives marking it weigh more than half of the total "
        "(a tie is background); indexed Ref-DAVIS17 PNGs are voted per object.",
        epilog="key=value: out=E.zip (required), weights=[2,1,1] (default: equal), "
        "data=<benchmark> (check the archives against that split), and other overrides of "
        "configs/pipeline.yaml (archive.jobs, archive.png_compress_level)",
    )
    parser.add_argument("archives", nargs="+", type=Path, help="zip files or folders of masks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)
    return parser


def expand_short_keys(overrides: Sequence[str]) -> list[str]:
    """``weights=...`` and ``out=...`` as the keys they stand for (:data:`SHORT_KEYS`); a list of
    weights without brackets (``2,1,1``) gets them."""
    expanded = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = SHORT_KEYS.get(key, key)
        if key == WEIGHTS_KEY and "," in value and not value.lstrip().startswith("["):
            value = f"[{value}]"
        expanded.append(f"{key}={value}")
    return expanded


def names_split(overrides: Sequence[str]) -> bool:
    """Whether the command line names a split (``data=...`` or a ``data.*`` key)."""
    keys = (o.lstrip("+~").partition("=")[0] for o in overrides)
    return any(key == DATA_SECTION or key.startswith(f"{DATA_SECTION}.") for key in keys)


def main(argv: Sequence[str]) -> int:
    """Returns the exit status: 0 written, 1 archives refused (or unreadable, or the output
    could not be written), 2 bad arguments, 130 interrupted."""
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    setup_logging(args.quiet)
    overrides = expand_short_keys(args.overrides)
    cfg = command_config(overrides)
    if cfg is None:
        return 2
    if cfg.ensemble.out is None:
        logger.error("out=E.zip: name the archive to write")
        return 2
    out = Path(cfg.ensemble.out)
    archives: list[Path] = args.archives
    if any(out.resolve() == path.resolve() for path in archives):
        logger.error("out=%s is one of the archives to fuse: write the ensemble elsewhere", out)
        return 2
    weights = cfg.ensemble.weights or [1.0] * len(archives)
    if len(weights) != len(archives):
        logger.error(
            "weights=%s: %d weight(s) for %d archive(s); give one per archive",
            cfg.ensemble.weights,
            len(weights),
            len(archives),
        )
        return 2
    return ensemble(cfg, archives, weights, out, with_split=names_split(overrides))


def ensemble(
    cfg: PipelineConfig,
    archives: Sequence[Path],
    weights: Sequence[float],
    out: Path,
    *,
    with_split: bool,
) -> int:
    """Check, vote and write; returns the exit status (see :func:`main`)."""
    from rvos.archive_layouts import MEMBER_LAYOUTS, split_inventory
    from rvos.ensemble import plan_ensemble, write_ensemble
    from rvos.splits import Split

    try:
        expected = None
        if with_split:
            split = Split(cfg.data.root, cfg.data.layout)
            expected = split_inventory(split, MEMBER_LAYOUTS.lookup(cfg.data.archive))
        plan = plan_ensemble(archives, weights, expected=expected, limits=cfg.evaluation.limits)
        count = write_ensemble(
            plan,
            out,
            compress_level=cfg.archive.png_compress_level,
            jobs=cfg.archive.jobs,
            stamp={"ensemble": {"archives": [str(p) for p in archives], "weights": list(weights)}},
        )
    except KeyboardInterrupt:
        logger.error("interrupted: %s was not written", out)
        return 130
    except (ValueError, OSError) as err:
        logger.error("%s", err)
        return 1
    ratios = ":".join(str(w) for w in plan.weights)
    logger.info(
        "wrote %s: %d masks of %d videos in the %s layout, voted from %d archives (weights %s)",
        out,
        count,
        len(plan.inventory.videos),
        plan.layout.name,
        len(archives),
        ratios,
    )
    return 0
