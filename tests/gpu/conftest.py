"""The GPU check's fixtures: the generated clip and models, loaded once for the session, and the
figures printed at the end of the run (``make gpu-check``; sizes and bars in
``benchmarks/gpu_check.py``).

The tests here are marked ``gpu`` and run only when ``-m`` names that marker (tests/conftest.py).
Without a CUDA GPU they skip, saying why. ``GPU_CHECK_ARGS`` sets the sizes and the work folder
(``--frames 30 --work-dir DIR``); with ``--cpu`` the tests run on the CPU with the tiny fixture
models, and those that need CUDA skip.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import gpu_check

MEASUREMENTS = pytest.StashKey[gpu_check.Measurements]()


@pytest.fixture(scope="session")
def measurements(pytestconfig) -> gpu_check.Measurements:
    """What the tests measured, printed by :func:`pytest_terminal_summary`."""
    return pytestconfig.stash.setdefault(MEASUREMENTS, gpu_check.Measurements())


@pytest.fixture(scope="session")
def gpu_args():
    """``GPU_CHECK_ARGS``, parsed (``gpu_check.build_parser``)."""
    try:
        return gpu_check.args_from_environment()
    except SystemExit:
        text = os.environ.get("GPU_CHECK_ARGS", "")
        pytest.fail(f"GPU_CHECK_ARGS={text!r}: bad arguments (the message above)", pytrace=False)


@pytest.fixture(scope="session")
def gpu_setup(gpu_args, measurements) -> Iterator[gpu_check.Setup]:
    """The generated clip, the random-weight models (written once) and the configuration; skips
    where there is no CUDA GPU, unless ``--cpu``."""
    reason = None if gpu_args.cpu else gpu_check.no_gpu_reason()
    if reason is not None:
        pytest.skip(f"{reason}: the GPU check needs one")
    os.environ.setdefault("TQDM_DISABLE", "1")  # also for the command lines the tests start
    where = "CPU run (--cpu, tiny models): " if gpu_args.cpu else ""
    measurements.machine = where + gpu_check.machine_line()
    with work_folder(gpu_args.work_dir) as work:
        start = time.perf_counter()
        setup = gpu_check.prepare(gpu_args, work)
        measurements.clip = (
            f"clip {setup.video_id}: {len(setup.images)} frames of {setup.images[0].width}x"
            f"{setup.images[0].height}, {len(setup.sentences)} expressions; models written in "
            f"{time.perf_counter() - start:.0f} s"
        )
        yield setup
        setup.models.clear()


@pytest.fixture(scope="session")
def cuda_setup(gpu_setup) -> gpu_check.Setup:
    """:func:`gpu_setup` on a CUDA device; skips on the CPU (``--cpu``)."""
    if not gpu_setup.on_gpu:
        pytest.skip("needs CUDA (this run is on the CPU: GPU_CHECK_ARGS=--cpu)")
    return gpu_setup


@pytest.fixture
def compared(measurements, record_property) -> Callable[[str, tuple[bool, str]], tuple[bool, str]]:
    """``compared(what, (passed, measured))``: keeps one comparison for the summary and the junit
    report (a property of the test) and gives it back."""

    def keep(what: str, result: tuple[bool, str]) -> tuple[bool, str]:
        passed, detail = result
        measurements.compared(what, passed, detail)
        record_property(what, detail)
        return passed, detail

    return keep


@contextlib.contextmanager
def work_folder(work_dir: Path | None) -> Iterator[Path]:
    """``work_dir`` (kept), or a temporary folder removed afterwards (the real-size models take
    gigabytes)."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        yield Path(folder)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The GPU check's figures: speed tables and every comparison's measured values."""
    measurements = config.stash.get(MEASUREMENTS, None)
    text = gpu_check.render(measurements) if measurements is not None else ""
    if text:
        terminalreporter.write_sep("=", "GPU check")
        terminalreporter.write_line(text)
