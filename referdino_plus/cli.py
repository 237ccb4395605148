"""The command line: ``run_pipeline.py`` and the ``referdino-plus`` entry point.

    run_pipeline.py [--gids 0 1 2 3] [--stages 1 2 3] [--cpu] [--name RUN] [--overwrite]
                    [key=value ...]
    run_pipeline.py demo --video PATH --text SENTENCE [--text ...] [options] [key=value ...]
    run_pipeline.py app [--gid N | --cpu] [--port P] [key=value ...]
    run_pipeline.py finish RECORD      (a launcher=slurm run submitted with launcher.slurm.wait=false)
    run_pipeline.py evaluate PRED [data=<benchmark>] [--data-root DIR] [--json OUT] [key=value ...]
    run_pipeline.py ensemble A.zip B.zip ... out=E.zip [weights=[2,1,1]] [data=<benchmark>]
    run_pipeline.py badcases PRED.zip [data=<benchmark>] [--json OUT]

``key=value`` are hydra overrides of ``configs/pipeline.yaml`` (e.g. ``data.root=...``,
``stage2.model=sam2.1_hiera_b+``). Each stage caches its per-video outputs in ``work_dir`` and
skips finished videos on a rerun. ``launcher=slurm`` runs the stages as a SLURM job array
(:mod:`referdino_plus.launchers`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from referdino_plus.arguments import (
    add_overrides_argument,
    command_config,
    parse_with_overrides,
)
from referdino_plus.runtime import (
    command_line,
    log_file_failed,
    log_to_file,
    setup_logging,
)
from referdino_plus.stages import STAGE_NUMBERS

if TYPE_CHECKING:
    from referdino_plus.pipeline import RunResult

logger = logging.getLogger("referdino_plus")

DESCRIPTION = """\
ReferDINO-Plus: ReferDINO proposals -> SAM 2 refinement -> conditional fusion -> MeViS archives.

commands:
  (none)   run the pipeline's stages on a split (the options below)
  demo     your own video and sentences: run_pipeline.py demo --help
  app      the demo in a browser page: run_pipeline.py app --help
  finish   wait for the tasks of a launcher=slurm run and write its archives:
           run_pipeline.py finish WORK_DIR/slurm/<job>_run.json (launcher.slurm.wait=false prints it)
  evaluate score an archive with its benchmark's metric:
           run_pipeline.py evaluate PRED.zip data=<benchmark> (run_pipeline.py evaluate --help)
  sweep    tune on a labelled split: run_pipeline.py sweep stage2.score_threshold=0.2,0.275,0.35
           (run_pipeline.py sweep --help)
  ensemble fuse archives of one split by weighted pixel voting:
           run_pipeline.py ensemble A.zip B.zip C.zip out=E.zip [weights=[2,1,1]]
  badcases list an archive's bad cases (empty masks, spatial words, worst J&F):
           run_pipeline.py badcases PRED.zip data=<benchmark>

launcher=slurm (key=value) submits the stages to a SLURM cluster: see docs/cluster.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description=DESCRIPTION,
        epilog="key=value: overrides of configs/pipeline.yaml, anywhere on the line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gids", type=int, nargs="+", help="GPU ids: one worker process per GPU (default: GPU 0)"
    )
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        choices=STAGE_NUMBERS,
        default=list(STAGE_NUMBERS),
        help="stages to run; each reads the previous stage's cached outputs (default: 1 2 3)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (one worker)")
    parser.add_argument("--name", help="run name: work/<name>, submissions/<name>")
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute finished videos instead of skipping"
    )
    parser.add_argument(
        "--visualize",
        action="store_true",
        help="after the run, draw per-expression mask strips and a J&F-per-video plot into "
        "work_dir/visualize (visualize.enabled=true)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags and ``key=value`` overrides in any order (``--stages 2 3 data.root=...``);
    ``--name`` and ``--visualize`` become ``name=...`` and ``visualize.enabled=true``."""
    return parse_with_overrides(
        build_parser(), argv, flag_overrides={"name": "name", "visualize": "visualize.enabled"}
    )


def run_command(argv: Sequence[str]) -> int:
    """The pipeline on a split; returns the exit status (0 done, 1 failed or another run holds
    ``work_dir``, 2 bad arguments, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM). Expected
    failures print one line; tracebacks go to the run's log file."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    from referdino_plus.config import ConfigError, load_config
    from referdino_plus.launchers import choose_launcher

    try:
        cfg = load_config(args.overrides)
        launcher = choose_launcher(cfg, args.gids, args.cpu, args.stages)
    except (ConfigError, ValueError) as err:
        logger.error("%s", err)
        return 2
    log_file = log_to_file(cfg.work_dir)

    def details() -> str:
        """Where the tracebacks are (none when the log file could not be written)."""
        return f" (details: {log_file})" if log_file and not log_file_failed() else ""

    logger.info("run %r on %s: stages %s", cfg.name, launcher.describe(), args.stages)
    # The stages' code loads only once the configuration is known to be good.
    from referdino_plus import pipeline
    from referdino_plus.preflight import PreflightError
    from referdino_plus.workdir_lock import WorkDirBusy
    from rvos.checkpoints import CheckpointError
    from rvos.intermediates import IntermediateError
    from rvos.interrupts import exit_status, signal_name, stop_on_signals
    from rvos.legacy import LegacyFormatError
    from rvos.mevis import DataError

    # Failures a user can act on, reported in one line: missing or bad files and folders, data
    # problems, a full disk. Anything else is a bug and keeps its traceback.
    expected = (
        PreflightError,
        pipeline.PipelineError,
        DataError,
        IntermediateError,
        LegacyFormatError,
        CheckpointError,
        WorkDirBusy,
        OSError,
    )
    command = command_line(argv)
    try:
        with stop_on_signals():  # SIGTERM too: the report says interrupted, writes are whole
            result = pipeline.run(
                cfg,
                stages=args.stages,
                devices=launcher.devices,
                overwrite=args.overwrite,
                command=command,
            )
    except KeyboardInterrupt as stop:
        logger.error(
            "interrupted (%s); finished videos are kept: rerun the same command to go on: %s",
            signal_name(stop),
            command,
        )
        return exit_status(stop)
    except expected as err:
        logger.debug("the run stopped", exc_info=True)
        logger.error("%s%s", err, "" if isinstance(err, PreflightError) else details())
        return 1
    if result.handoff is not None:
        print(result.handoff.describe())
        return 0
    return report_result(result, details())


def report_result(result: RunResult, details: str = "") -> int:
    """Log the archives, print the score table; returns the exit status of the run."""
    from referdino_plus import pipeline

    for name, path in result.archives.items():
        logger.info("archive %s: %s", name, path)
    if result.scores:
        print(pipeline.format_scores(result.scores))
    if result.bad_cases is not None:
        print(result.bad_cases.format())
    if not result.ok:
        where = f"see {result.report}" if result.report else "its report could not be written"
        logger.error("the run did not complete: %s%s", where, details)
        return 1
    return 0


def finish_command(argv: Sequence[str]) -> int:
    """``finish RECORD``: wait for a submitted SLURM run's tasks, then its archives and scores."""
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py finish",
        description="Wait for the tasks of a launcher=slurm run, report the failed ones, and "
        "write its archives, scores and report when all succeeded.",
    )
    parser.add_argument("record", help="the run's record: <launcher.slurm.log_dir>/<job>_run.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    from referdino_plus.config import ConfigError
    from referdino_plus.launchers.slurm.finish import collect
    from referdino_plus.launchers.slurm.record import SubmittedRun
    from referdino_plus.pipeline import PipelineError
    from referdino_plus.workdir_lock import WorkDirBusy
    from rvos.interrupts import exit_status, stop_on_signals
    from rvos.mevis import DataError

    try:
        with stop_on_signals():
            result = collect(SubmittedRun.load(args.record))
    except KeyboardInterrupt as stop:
        return exit_status(stop)
    except (PipelineError, ConfigError, DataError, WorkDirBusy, OSError) as err:
        logger.error("%s", err)
        return 1
    return report_result(result)


def evaluate_command(argv: Sequence[str]) -> int:
    """``evaluate PRED [data=<benchmark>] [key=value ...]``: score an archive with its benchmark's
    metric (:mod:`rvos.evaluation`). The benchmark's configuration, composed as for a run,
    gives the split (``data.root``), its layout and metric, the processes
    (``evaluation.jobs``) and the limits on what the archive may hold
    (``evaluation.limits``); ``--data-root``, ``--layout``, ``--metric`` and ``--jobs``
    override them. Returns the exit status (0 scored, 1 a missing or unreadable prediction or ground
    truth, 2 bad arguments)."""
    from rvos.evaluation import build_parser, run

    parser = build_parser("run_pipeline.py evaluate", standalone=False)
    parser.epilog = (
        "key=value: overrides of configs/pipeline.yaml, anywhere on the line: data=<benchmark> "
        "(configs/data/<benchmark>.yaml) picks the split, its layout and its metric"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)
    args = parse_with_overrides(
        parser, argv, stray=lambda word: parser.error(f"unrecognized argument: {word}")
    )
    setup_logging(args.quiet)
    cfg = command_config(args.overrides)
    if cfg is None:
        return 2
    benchmark = {
        "data_root": cfg.data.root,
        "layout": cfg.data.layout,
        "metric": cfg.data.metric,
        "jobs": cfg.evaluation.jobs,
        "limits": cfg.evaluation.limits,
    }
    for dest, value in benchmark.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    if args.metric is None:
        logger.error(
            "data.metric=null: this benchmark is not scored here (no local ground truth); "
            "name a metric with --metric or data.metric"
        )
        return 2
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from referdino_plus.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["app"]:
        from referdino_plus.app_server import main as app_main

        return app_main(argv[1:])
    if argv[:1] == ["finish"]:
        return finish_command(argv[1:])
    if argv[:1] == ["evaluate"]:
        return evaluate_command(argv[1:])
    if argv[:1] == ["ensemble"]:
        from referdino_plus.ensemble import main as ensemble_main

        return ensemble_main(argv[1:])
    if argv[:1] == ["badcases"]:
        from referdino_plus.bad_cases import main as bad_cases_main

        return bad_cases_main(argv[1:])
    if argv[:1] == ["sweep"]:
        from referdino_plus.sweep_command import main as sweep_main

        return sweep_main(argv[1:])
    return run_command(argv)
