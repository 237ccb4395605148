"""Clean stops: SIGTERM and SIGINT raise :class:`Interrupted` in the main thread.

A process asked to stop (``scancel``, ``docker stop``, ``kill``, a pre-empting scheduler:
SIGTERM; Ctrl-C: SIGINT) raises :class:`Interrupted` wherever its main thread is. Every file is
written through :func:`rvos.io.atomic_output`, so the exception drops the write in progress (its
temporary file is removed) and the file keeps its previous content; a write that must finish
first (a run's report, a submission and its record) runs under :func:`signals_deferred`, and the
signal is raised once it is done.

:class:`Interrupted` is a ``KeyboardInterrupt``: every place that handles Ctrl-C handles SIGTERM
the same way. Worker processes (:mod:`rvos.workers`) stop the same way, and on Linux also when
their parent dies, however it dies (:func:`prepare_worker_process`), so a killed run leaves no
worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# prctl(2): ask the kernel to send this process a signal when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum`` (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def signal_name(stop: KeyboardInterrupt) -> str:
    """``SIGTERM`` or ``SIGINT`` (a plain ``KeyboardInterrupt``: Python's own Ctrl-C)."""
    return signal.Signals(getattr(stop, "signum", signal.SIGINT)).name


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's status of a process ended by the stop's signal: 128 + its number (SIGTERM
    143, SIGINT 130)."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


@dataclass
class _Deferral:
    depth: int = 0  # nested signals_deferred blocks open
    pending: int | None = None  # a stop signal that arrived in one


_deferral = _Deferral()


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    if _deferral.depth:
        _deferral.pending = signum
        return
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread (the
    previous handlers are restored after it). Called from another thread, it changes nothing:
    only the main thread can set signal handlers."""
    if not _in_main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back a stop signal that arrives within the block: the block finishes (a write that
    must be whole, e.g. a report) and :class:`Interrupted` is raised after it. Only where
    :func:`stop_on_signals` (or :func:`prepare_worker_process`) installed the handler; a signal
    that arrives while the block itself fails is dropped (its own error goes on)."""
    _deferral.depth += 1
    try:
        yield
    finally:
        _deferral.depth -= 1
        signum = _deferral.pending if _deferral.depth == 0 else None
        if _deferral.depth == 0:
            _deferral.pending = None
    if signum is not None:
        raise Interrupted(signum)


def prepare_worker_process() -> None:
    """In a worker process, first: SIGTERM and SIGINT raise :class:`Interrupted`, and on Linux
    the kernel sends SIGTERM when the parent ends (even by SIGKILL), so that no worker outlives
    its run. A parent already gone raises :class:`Interrupted` at once."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        raise Interrupted(signal.SIGTERM)
