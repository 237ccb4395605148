"""The command line run in the test's own process (so a test can change what a run meets, or
catch what it raises), with the logging it sets up undone afterwards."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logging_restored() -> Iterator[logging.Logger]:
    """The root logger, given back with its handlers and level as they were before the block
    (the command line adds its own console and log-file handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        logging.captureWarnings(False)


def run_in_process(*argv) -> int:
    """``run_pipeline.py *argv`` in this process (its console goes to stderr: ``capfd``);
    returns the exit status."""
    from referdino_plus.cli import main

    with logging_restored():
        return main([str(a) for a in argv])
