"""Running a per-video job over sorted videos on one or more devices.

A worker runs a *builder* named by ``"module:function"``: it takes ``(job, device: str)`` — the
job a plain, picklable object describing the stage's work (paths, fingerprints, options) — loads
its models once, and returns a callable that processes one ``video_id``. With one device
the job runs in this process (debuggable, no pickling); with several, one spawned process per
device, each bound to its GPU, processes its contiguous shard of the sorted video ids.

A video that raises is reported with its id and traceback; the worker goes on with its other
videos, and every other shard's finished work is kept. A worker process that dies (killed,
out of memory, segfault) is reported with the video it was working on. A failed write (a full
disk, a read-only folder: :func:`rvos.io.is_write_fault`) stops every worker instead: each later
video would be computed only to fail the same way. A run that stops (SIGTERM, SIGINT:
:mod:`rvos.interrupts`) stops its worker processes, which drop the write in progress, and waits
for them; a worker whose run dies stops too (Linux), so none is left behind.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rvos.interrupts import Interrupted, exit_status, prepare_worker_process
from rvos.io import is_write_fault, write_fault_message
from rvos.progress import progress_bar

logger = logging.getLogger(__name__)

VideoProcessor = Callable[[str], None]
# ``(kind, worker, video_id, message)``: kind ``start``, ``done``, ``failed``, ``setup_failed`` or
# ``stopped`` (a write fault: the worker stops); message ``(one line, traceback)`` of a failure,
# else None.
EventListener = Callable[[str, int, str | None, tuple[str, str] | None], None]


def shard(video_ids: Sequence[str], num_shards: int) -> list[list[str]]:
    """Split the sorted ``video_ids`` into ``num_shards`` contiguous, near-equal shards.

    Deterministic: the same ids give the same shards whatever their input order. The first
    ``len % num_shards`` shards get one extra video.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    ordered = sorted(video_ids)
    base, extra = divmod(len(ordered), num_shards)
    shards, start = [], 0
    for index in range(num_shards):
        size = base + (1 if index < extra else 0)
        shards.append(ordered[start : start + size])
        start += size
    return shards


@dataclass
class Failure:
    """A video (or a worker set-up, ``video_id=None``) that failed.

    Attributes:
        error: one line: the exception's type and message (or how the worker process died).
        details: the full traceback (empty when the process died without one).
    """

    worker: int
    device: str
    video_id: str | None
    error: str
    details: str = ""
    write_fault: bool = False  # a failed write, which stopped the workers

    @property
    def what(self) -> str:
        """``video 'x'`` or ``set-up`` (the model could not be loaded)."""
        return f"video {self.video_id!r}" if self.video_id else "set-up"


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def write_fault(self) -> Failure | None:
        """The failed write that stopped the workers, if one did."""
        return next((f for f in self.failures if f.write_fault), None)


def resolve_job(target: str) -> Callable[[Any, str], VideoProcessor]:
    """Import ``"package.module:function"``."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def bind_device(device: str) -> None:
    """Make ``device`` the current CUDA device of this process (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


def _run_shard(
    worker: int,
    device: str,
    target: str,
    job: Any,
    video_ids: list[str],
    emit: Callable[..., None],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Load the job once and process ``video_ids``, reporting through ``emit(kind, ...)``; stop
    at a write fault (``stopped`` event) or before a video once ``stopped()`` is true."""
    try:
        bind_device(device)
        process = resolve_job(target)(job, device)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which exits non-zero
        emit("stopped" if is_write_fault(err) else "setup_failed", worker, None, _describe(err))
        return
    for video_id in video_ids:
        if stopped():
            return
        emit("start", worker, video_id, None)
        try:
            process(video_id)
        except Exception as err:  # noqa: BLE001 - one video's failure must not stop the shard
            if is_write_fault(err):  # ... but a failed write stops it: every video would fail
                emit("stopped", worker, video_id, _describe(err))
                return
            emit("failed", worker, video_id, _describe(err))
        else:
            emit("done", worker, video_id, None)


def _describe(err: BaseException) -> tuple[str, str]:
    """``(one line, full traceback)`` of an exception (a write fault: its path, error and what
    to do)."""
    if is_write_fault(err):
        summary = write_fault_message(err)
    else:
        summary = " ".join("".join(traceback.format_exception_only(err)).split())
    return summary, "".join(traceback.format_exception(err)).rstrip()


def share_cpu_threads(num_workers: int) -> None:
    """Give this worker process its share of the CPU cores for torch's CPU ops.

    Every process would otherwise start one thread per core, oversubscribing the machine
    ``num_workers`` times for the CPU-side work (resizing masks, decoding frames).
    """
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_workers))


def _console_level() -> int:
    """The level of this process's console output (its stream handlers), for the workers'."""
    levels = [
        h.level
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    return min(levels) if levels else logging.WARNING


def _process_entry(
    worker: int,
    device: str,
    target: str,
    job: Any,
    video_ids: list[str],
    channel: Connection,
    log_level: int,
    num_workers: int,
    stop: Any,
) -> None:
    try:
        prepare_worker_process()
        logging.basicConfig(
            level=log_level,
            format=f"%(asctime)s [worker {worker} {device}] %(levelname)s %(message)s",
        )
        share_cpu_threads(num_workers)
        # Connection.send is synchronous: an event sent before a crash is never lost.
        _run_shard(
            worker, device, target, job, video_ids, lambda *event: channel.send(event), stop.is_set
        )
    except Interrupted as stopped:
        sys.exit(exit_status(stopped))  # its write dropped; the run says why it stopped
    channel.send(("exit", worker, None, None))
    channel.close()


def run_sharded(
    target: str,
    job: Any,
    video_ids: Sequence[str],
    devices: Sequence[str],
    *,
    desc: str,
    on_event: EventListener | None = None,
) -> RunSummary:
    """Process ``video_ids`` with the builder ``target`` of ``job`` on ``devices`` (one worker
    per device).

    Args:
        on_event: also told every worker event, in this process, as it happens (a ``start``
            before the video is processed): e.g. to record which video a worker is on.
    Returns:
        which videos finished and which failed (with the worker, device and traceback).
    """
    shards = shard(video_ids, len(devices))
    summary = RunSummary()
    bars = [
        progress_bar(
            total=len(ids),
            desc=f"{desc} [{dev}]",
            unit="video",
            position=i,
            leave=True,
            dynamic_ncols=True,
        )
        for i, (ids, dev) in enumerate(zip(shards, devices, strict=True))
    ]
    current: dict[int, str | None] = {}

    def record(
        kind: str, worker: int, video_id: str | None, message: tuple[str, str] | None
    ) -> None:
        if kind == "start":
            current[worker] = video_id
            bars[worker].set_postfix_str(str(video_id), refresh=True)
            return
        if kind == "done":
            summary.done.append(str(video_id))
        elif kind in ("failed", "setup_failed", "stopped"):
            failure = Failure(worker, devices[worker], video_id, *message, kind == "stopped")
            summary.failures.append(failure)
            # One line for the console (a write fault: said once, by whoever stops the run);
            # the traceback for the run's log file (DEBUG).
            if not failure.write_fault:
                logger.error(
                    "%s on %s: %s failed: %s", desc, failure.device, failure.what, failure.error
                )
            if failure.details:
                logger.debug(
                    "%s on %s: %s\n%s", desc, failure.device, failure.what, failure.details
                )
        current[worker] = None
        if video_id is not None:
            bars[worker].update(1)

    def notify(
        kind: str, worker: int, video_id: str | None, message: tuple[str, str] | None
    ) -> None:
        record(kind, worker, video_id, message)
        if on_event is not None:
            on_event(kind, worker, video_id, message)

    try:
        if len(devices) == 1:
            _run_shard(0, devices[0], target, job, shards[0], notify)
        else:
            _run_processes(target, job, shards, devices, notify, current)
    finally:
        for bar in bars:
            bar.close()
    return summary


def _run_processes(
    target: str,
    job: Any,
    shards: list[list[str]],
    devices: Sequence[str],
    on_event: Callable[[str, int, str | None, str], None],
    current: dict[int, str | None],
) -> None:
    """One spawned process per non-empty shard; events arrive over one pipe per worker. After a
    write fault (a ``stopped`` event) every worker is told to stop before its next video."""
    context = mp.get_context("spawn")
    stop = context.Event()
    processes, channels = {}, {}
    for worker, (ids, device) in enumerate(zip(shards, devices, strict=True)):
        if not ids:
            continue
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_process_entry,
            args=(
                worker,
                device,
                target,
                job,
                ids,
                sender,
                _console_level(),
                len(devices),
                stop,
            ),
            name=f"worker-{worker}-{device}",
        )
        process.start()
        sender.close()
        processes[worker], channels[worker] = process, receiver
    try:
        _receive_events(processes, channels, stop, on_event, current)
    except BaseException:
        _stop_processes(list(processes.values()))
        raise
    for process in processes.values():
        process.join()
        if process.exitcode != 0:
            logger.warning("%s exited with code %s", process.name, process.exitcode)


def _stop_processes(processes: Sequence[Any]) -> None:
    """Stop the worker processes of a run that stops (interrupted, or an error here): SIGTERM
    (each drops the write in progress), then wait for them; stopped again while waiting, kill
    them."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    try:
        for process in processes:
            process.join()
    except BaseException:
        for process in processes:
            process.kill()
        raise


def _receive_events(
    processes: dict[int, Any],
    channels: dict[int, Connection],
    stop: Any,
    on_event: Callable[[str, int, str | None, str], None],
    current: dict[int, str | None],
) -> None:
    """Hand every worker's events to ``on_event`` until each has said goodbye or died."""
    while channels:
        ready = wait(list(channels.values()))
        for worker, channel in list(channels.items()):
            if channel not in ready:
                continue
            try:
                kind, _, video_id, message = channel.recv()
            except EOFError:
                # The process ended without saying goodbye: it died.
                processes[worker].join()
                video_id = current.get(worker)
                on_event(
                    "failed" if video_id else "setup_failed",
                    worker,
                    video_id,
                    (f"worker process died with exit code {processes[worker].exitcode}", ""),
                )
                del channels[worker]
                continue
            if kind == "exit":
                del channels[worker]
            else:
                if kind == "stopped":
                    stop.set()
                on_event(kind, worker, video_id, message)
