"""Running ``run_pipeline.py`` in a subprocess, for the end-to-end tests."""

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def run_cli(*args, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``python run_pipeline.py *args`` from the project root; ``check``: fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "run_pipeline.py"), *map(str, args)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc
