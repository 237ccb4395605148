"""The command line: ``run_pipeline.py`` and the ``referdino-plus`` entry point.

    run_pipeline.py [--gids 0 1 2 3] [--stages 1 2 3] [--cpu] [--name RUN] [--overwrite]
                    [key=value ...]
    run_pipeline.py demo --video PATH --text SENTENCE [--text ...] [options] [key=value ...]
    run_pipeline.py finish RECORD      (a launcher=slurm run submitted with launcher.wait=false)

``key=value`` are hydra overrides of ``configs/pipeline.yaml`` (e.g. ``data.root=...``,
``stage2.model=sam2.1_hiera_b+``). Each stage caches its per-video outputs in ``work_dir`` and
skips finished videos on a rerun. ``launcher=slurm`` runs the stages as a SLURM job array
(:mod:`referdino_plus.slurm`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from referdino_plus.runtime import gpu_count, select_devices, setup_logging

if TYPE_CHECKING:
    from referdino_plus.pipeline import RunResult
    from referdino_plus.slurm import SubmittedRun

logger = logging.getLogger("referdino_plus")

DESCRIPTION = """\
ReferDINO-Plus: ReferDINO proposals -> SAM 2 refinement -> conditional fusion -> MeViS archives.

commands:
  (none)   run the pipeline's stages on a split (the options below)
  demo     your own video and sentences: run_pipeline.py demo --help
  finish   wait for the tasks of a launcher=slurm run and write its archives:
           run_pipeline.py finish WORK_DIR/slurm/<job>_run.json (launcher.wait=false prints it)

launcher=slurm (key=value) submits the stages to a SLURM cluster: see README "Running on a cluster".
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
        choices=(1, 2, 3),
        default=[1, 2, 3],
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
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of configs/pipeline.yaml"
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags and ``key=value`` overrides in any order (``--stages 2 3 data.root=...``)."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    flags = [a for a in argv if a not in overrides]
    args = build_parser().parse_args(flags)
    args.overrides = list(args.overrides) + overrides
    if args.name:
        args.overrides.append(f"name={args.name}")
    if args.visualize:
        args.overrides.append("visualize.enabled=true")
    return args


def run_command(argv: Sequence[str]) -> int:
    """The pipeline on a split; returns the exit status."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    from referdino_plus.config import ConfigError, load_config

    try:
        cfg = load_config(args.overrides)
        if cfg.launcher.name == "slurm":
            if args.gids or args.cpu:
                raise ValueError(
                    "--gids and --cpu choose this machine's devices; with launcher=slurm, "
                    "launcher.gpus_per_task sets each task's"
                )
            devices = [f"SLURM ({cfg.launcher.tasks} tasks)"]
        else:
            devices = select_devices(args.gids, args.cpu, available=0 if args.cpu else gpu_count())
    except (ConfigError, ValueError) as err:
        logger.error("%s", err)
        return 2
    # The stages' code loads only once the configuration is known to be good.
    from tqdm.contrib.logging import logging_redirect_tqdm

    from referdino_plus import pipeline
    from rvos.intermediates import IntermediateError
    from rvos.mevis import DataError

    logger.info("run %r on %s: stages %s", cfg.name, ", ".join(devices), args.stages)
    try:
        with logging_redirect_tqdm():
            if cfg.launcher.name == "slurm":
                from referdino_plus.slurm import SubmittedRun, run_on_slurm

                result = run_on_slurm(cfg, stages=args.stages, overwrite=args.overwrite)
                if isinstance(result, SubmittedRun):
                    print_submission(result)
                    return 0
            else:
                result = pipeline.run(
                    cfg, stages=args.stages, devices=devices, overwrite=args.overwrite
                )
    except (pipeline.PipelineError, DataError, IntermediateError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    return report_result(result, cfg.work_dir)


def report_result(result: RunResult, work_dir: str) -> int:
    """Log the archives, print the score table; the exit status of the run."""
    from referdino_plus import pipeline

    for name, path in result.archives.items():
        logger.info("archive %s: %s", name, path)
    if result.scores:
        print(pipeline.format_scores(result.scores))
    if not result.ok:
        logger.error("some videos failed (see above and %s/report.json)", work_dir)
        return 1
    return 0


def print_submission(run: SubmittedRun) -> None:
    """What ``launcher.wait=false`` submitted, and the command that finishes the run."""
    print(f"job array: {run.array_id} ({len(run.job_ids)} tasks), logs in {run.log_dir}")
    print(f"finishing job: {run.finishing_job_id} (writes the archives once the array has ended)")
    print(f"finish by hand: {run.finish_command()}")


def finish_command(argv: Sequence[str]) -> int:
    """``finish RECORD``: wait for a submitted SLURM run's tasks, then its archives and scores."""
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py finish",
        description="Wait for the tasks of a launcher=slurm run, report the failed ones, and "
        "write its archives, scores and report when all succeeded.",
    )
    parser.add_argument("record", help="the run's record: <launcher.log_dir>/<job>_run.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from referdino_plus.config import ConfigError, from_yaml
    from referdino_plus.pipeline import PipelineError
    from referdino_plus.slurm import SubmittedRun, collect
    from rvos.mevis import DataError

    try:
        run = SubmittedRun.load(args.record)
        work_dir = from_yaml(run.config).work_dir
        with logging_redirect_tqdm():
            result = collect(run)
    except (PipelineError, ConfigError, DataError) as err:
        logger.error("%s", err)
        return 1
    return report_result(result, work_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from referdino_plus.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["finish"]:
        return finish_command(argv[1:])
    return run_command(argv)
