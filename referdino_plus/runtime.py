"""What every command of the application sets up the same way: logging and devices."""

from __future__ import annotations

import logging
from collections.abc import Sequence

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(quiet: bool = False) -> None:
    """INFO (or, ``quiet``, WARNING) to stderr, with times."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S"
    )


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
        return ["cuda:0"] if available else ["cpu"]
    absent = [g for g in gids if g < 0 or g >= available]
    if absent:
        raise ValueError(f"GPU id(s) {absent} not available: this machine has {available} GPU(s)")
    if len(set(gids)) != len(gids):
        raise ValueError(f"--gids lists a GPU twice: {list(gids)}")
    return [f"cuda:{g}" for g in gids]
