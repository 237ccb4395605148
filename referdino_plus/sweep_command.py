"""``run_pipeline.py sweep``: the command line of :mod:`referdino_plus.sweep`.

run_pipeline.py sweep [--gids 0 1] [--cpu] [--name RUN] [--out DIR] [-q] key=value|sweep ...
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from referdino_plus.arguments import add_overrides_argument, parse_with_overrides
from referdino_plus.runtime import command_line, log_file_failed, log_to_file, setup_logging

if TYPE_CHECKING:
    from referdino_plus.sweep import SweepPlan

logger = logging.getLogger("referdino_plus")

DESCRIPTION = """\
Tune on a labelled split: run the pipeline for every point of a sweep, score each on the split's
ground truth, and print the table and the best point's command line for valid or test.

A sweep is hydra's override grammar: key=a,b,c, key=choice(a,b), key=range(start,stop,step),
key=[1,2],[2,3] (lists); keys with one value hold for every point. Each point reuses the stage
records of the points (and of the run in work_dir) that share its settings: a sweep over stage3.*
runs stage 3 only. Rerunning the same command goes on where it stopped.

example:
  run_pipeline.py sweep --gids 0 1 data=mevis_valid_u stage2.score_threshold=0.2,0.275,0.35 \\
      'stage3.shrink_ratio=[1,2],[2,3]'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py sweep",
        description=DESCRIPTION,
        epilog="key=value: overrides of configs/pipeline.yaml, a sweep where a key has several "
        "values; anywhere on the line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gids", type=int, nargs="+", help="GPU ids: each point's videos over them, as a run"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (one worker)")
    parser.add_argument(
        "--name", help="run name: the sweep lives in work/<name>/sweep, beside that run's records"
    )
    parser.add_argument(
        "--out",
        help="folder of sweep.csv, sweep.json and sweep.png (default: work_dir/sweep)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)
    return parser


def device_flags(args: argparse.Namespace) -> list[str]:
    """The sweep's device flags as typed, for the best point's command line."""
    if args.cpu:
        return ["--cpu"]
    return ["--gids", *map(str, args.gids)] if args.gids else []


def main(argv: Sequence[str]) -> int:
    """The sweep; returns the exit status (0 done, 1 a point failed, 2 a sweep that cannot
    start, 130 interrupted). Everything that would stop the sweep is checked before any work,
    and reported in one line."""
    parser = build_parser()
    args = parse_with_overrides(parser, argv, flag_overrides={"name": "name"})
    setup_logging(args.quiet)
    from referdino_plus.config import ConfigError
    from referdino_plus.launchers import choose_launcher
    from referdino_plus.stages import STAGE_NUMBERS
    from referdino_plus.sweep import SweepError, plan_sweep

    try:
        plan = plan_sweep(args.overrides)
        # A point runs the stages it needs of all of them.
        launcher = choose_launcher(plan.base, args.gids, args.cpu, list(STAGE_NUMBERS))
    except (SweepError, ConfigError, ValueError) as err:
        logger.error("%s", err)
        return 2
    log_file = log_to_file(plan.root)
    logger.info(
        "sweep of %d point(s) over %s on %s (%s)",
        len(plan.points),
        ", ".join(plan.keys),
        plan.split.root,
        launcher.describe(),
    )
    return run_and_report(plan, launcher.devices, args, log_file, command_line(["sweep", *argv]))


def run_and_report(
    plan: SweepPlan,
    devices: Sequence[str],
    args: argparse.Namespace,
    log_file: Path | None,
    command: str,
) -> int:
    """Run the sweep's points, then print and write its table and the best point's commands;
    returns the exit status."""
    from referdino_plus import sweep_report
    from referdino_plus.pipeline import PipelineError
    from referdino_plus.preflight import PreflightError
    from referdino_plus.sweep import SweepError, run_sweep
    from referdino_plus.workdir_lock import WorkDirBusy
    from rvos.checkpoints import CheckpointError
    from rvos.intermediates import IntermediateError
    from rvos.interrupts import exit_status, stop_on_signals
    from rvos.legacy import LegacyFormatError
    from rvos.mevis import DataError

    details = f" (details: {log_file})" if log_file and not log_file_failed() else ""
    expected = (
        SweepError,
        WorkDirBusy,
        PreflightError,
        PipelineError,
        DataError,
        IntermediateError,
        LegacyFormatError,
        CheckpointError,
        OSError,
    )
    try:
        with stop_on_signals():  # SIGTERM too: a point's report says interrupted
            results = run_sweep(plan, devices, command)
    except KeyboardInterrupt as stop:
        logger.error("interrupted; finished points are kept: rerun the same command to go on")
        return exit_status(stop)
    except expected as err:
        logger.debug("the sweep stopped", exc_info=True)
        logger.error(
            "%s%s",
            err,
            "" if isinstance(err, (PreflightError, SweepError, WorkDirBusy)) else details,
        )
        return 1
    best = sweep_report.best_result(results)
    commands = sweep_report.best_commands(plan, best, device_flags(args))
    files = sweep_report.write_report(Path(args.out or plan.root), plan, results, commands)
    print(sweep_report.format_table(plan, results))
    print(f"best: point {best.point.index}, J&F {100 * best.scores['J&F']:.2f}")
    for split, command in commands:
        print(f"  {split}: {command}")
    for kind, path in files.items():
        logger.info("sweep %s: %s", kind, path)
    return 0
