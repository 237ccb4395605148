"""Progress bars that a quiet run silences, in its own process and in those it starts.

Every bar of the pipeline (the stages' workers, the frame check, archive writing, evaluation,
the demo) is made by :func:`progress_bar`. :func:`set_quiet` (the commands' ``-q``) turns them
off through an environment variable, so that worker processes, which inherit the environment,
stay quiet too.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

# Set (to "1") while progress bars are off; worker processes inherit it.
QUIET_VARIABLE = "REFERDINO_PLUS_QUIET"


def set_quiet(quiet: bool) -> None:
    """Turn the progress bars of this process and of the processes it starts off (or on)."""
    if quiet:
        os.environ[QUIET_VARIABLE] = "1"
    else:
        os.environ.pop(QUIET_VARIABLE, None)


def is_quiet() -> bool:
    """Whether progress bars are off (:func:`set_quiet`)."""
    return os.environ.get(QUIET_VARIABLE, "") not in ("", "0")


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when the run is quiet."""
    if is_quiet():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
