"""What every command of the application sets up the same way: logging and devices."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from referdino_plus.arguments import add_overrides_argument
from rvos.progress import set_quiet

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers whose DEBUG records (tracebacks of failed videos, ...) go to a run's log file.
OWN_LOGGERS = ("referdino_plus", "rvos", "stage1_referdino", "stage2_sam2_refine", "stage3_fusion")
LOG_DIR = "logs"  # in work_dir

logger = logging.getLogger(__name__)


class _ConsoleHandler(logging.StreamHandler):
    """stderr, written through ``tqdm.write`` so that records print between progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _LogFile(logging.FileHandler):
    """A run's log file that, once a record cannot be written (a full disk, the folder gone),
    says so once on stderr and stops, instead of a traceback per record."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's API
        self._stop(sys.exc_info()[1])

    def close(self) -> None:
        try:
            super().close()
        except OSError as err:  # the last lines could not be written
            self._stop(err)

    def _stop(self, error: BaseException | None) -> None:
        if self.failed:
            return
        self.failed = True
        reason = getattr(error, "strerror", None) or error or "unknown error"
        sys.stderr.write(
            f"logging to {self.baseFilename} stopped: {reason}; messages go to the console only\n"
        )


def log_file_failed() -> bool:
    """Whether a log file of :func:`log_to_file` stopped writing (its messages are missing)."""
    return any(isinstance(h, _LogFile) and h.failed for h in logging.getLogger().handlers)


class _OwnDebug(logging.Filter):
    """DEBUG records of our own packages, and everything from INFO up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or record.name.split(".")[0] in OWN_LOGGERS


def setup_logging(quiet: bool = False) -> None:
    """INFO (or, ``quiet``, WARNING and no progress bars) to stderr, with times. Python warnings
    (e.g. a library's ``UserWarning``) go through logging too, so they print between progress
    bars, not in them."""
    set_quiet(quiet)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = _ConsoleHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(console)
    logging.captureWarnings(True)


def log_to_file(work_dir: str | Path) -> Path | None:
    """Also log everything, tracebacks included, to ``work_dir/logs/<time>.log``.

    Returns:
        the file, or ``None`` when it cannot be created (the run's checks then say why).
    """
    path = Path(work_dir) / LOG_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path)
    except OSError:
        return None
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_OwnDebug())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return path


def add_single_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cpu`` | ``--gid N``, ``-q`` and the ``key=value`` overrides (demo and app)."""
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="run on the CPU")
    device.add_argument("--gid", type=int, metavar="N", help="run on GPU N (default: GPU 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)


def gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def select_devices(gids: Sequence[int] | None, cpu: bool, *, available: int) -> list[str]:
    """Devices of ``--gids``/``--gid``/``--cpu``: one worker each.

    Args:
        gids: GPU ids asked for (``None`` or empty: GPU 0 if there is one, else the CPU).
        cpu: run on the CPU.
        available: GPUs of this machine (:func:`gpu_count`).
    Raises:
        ValueError: ``cpu`` with ``gids``, an absent GPU, or a GPU listed twice.
    """
    if cpu:
        if gids:
            raise ValueError("--cpu and --gids exclude each other")
        return ["cpu"]
    if not gids:
        if not available:
            logger.warning(
                "no GPU found: running on the CPU, which is much slower (--cpu chooses it "
                "without this warning)"
            )
            return ["cpu"]
        return ["cuda:0"]
    absent = [g for g in gids if g < 0 or g >= available]
    if absent:
        raise ValueError(f"GPU id(s) {absent} not available: this machine has {available} GPU(s)")
    if len(set(gids)) != len(gids):
        raise ValueError(f"--gids lists a GPU twice: {list(gids)}")
    return [f"cuda:{g}" for g in gids]


def command_line(argv: Sequence[str]) -> str:
    """The shell command that runs this process's command ``argv`` again, from its folder
    (``cd <cwd> && <python> run_pipeline.py <argv>``; installed: ``referdino-plus <argv>``)."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "run_pipeline.py"
    if Path(program).name == "__main__.py":
        start = [sys.executable, "-m", "referdino_plus"]
    elif program.endswith(".py"):
        start = [sys.executable, program]
    else:
        start = [program]
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join([*start, *argv])}"
