"""One run per work folder: a run holds a lock on its ``work_dir`` while it reads and writes it.

The lock is ``work_dir/run.lock``, a kernel lock (``flock``, through ``filelock``) held through
an open file: the kernel releases it when the process ends, however it ends (SIGKILL included),
so a lock left by a killed run never blocks the next one. The file records its holder as JSON
(:class:`Holder`: the run's id, pid, host, start time and command line). A run that finds the
lock held waits for it up to ``run.lock_timeout`` seconds (``0``: refuses at once; ``null``: as
long as it takes), then refuses in one line naming the holder and the file
(:class:`WorkDirBusy`).

A ``launcher=slurm`` run outlives the process that submitted it (``launcher.slurm.wait=false``,
or a submitter stopped while its tasks go on): the submitter records its jobs in the file
(:meth:`WorkDirLock.record_jobs`), and while ``squeue`` lists one of them queued or running, no
other run takes the folder, whoever holds the kernel lock. The run's own processes carry its id
(:attr:`WorkDirLock.run_id`) and work inside that claim: its array tasks check that the file
still names their run (:func:`check_run_holds`), its finishing job and ``run_pipeline.py
finish`` take the lock again as the same run. Once every task has ended, the run forgets its jobs
(:meth:`WorkDirLock.forget_jobs`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

if TYPE_CHECKING:
    from referdino_plus.config import RunOptions

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"  # in work_dir


class WorkDirBusy(RuntimeError):
    """Another run uses the folder (or may: its SLURM jobs cannot be checked); the message is
    one line naming the holder, the lock file and what to do."""


class WorkDirUnusable(OSError):
    """The folder's file system has no file locks; the message is one line saying what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class Holder:
    """What ``run.lock`` records of the run that holds it (or held it last)."""

    run_id: str  # the run's id, carried by its SLURM tasks and finishing job
    pid: int
    host: str
    started: str  # ISO 8601, this host's time zone
    command: str  # the command line that started the run ("": not from the command line)
    slurm_jobs: list[str] = field(default_factory=list)  # array and finishing job ids
    released: bool = False  # the holder let go of the lock (not killed)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in ``path`` (``None``: no file, or no readable record in it)."""
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def _parse(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None  # empty, cut short by a kill, or not ours


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def active_slurm_jobs(job_ids: Sequence[str]) -> list[str]:
    """:func:`referdino_plus.launchers.slurm.queue.active_jobs` (imported when a folder is
    claimed by SLURM jobs).

    Raises:
        OSError: squeue is not here, or did not answer.
    """
    from referdino_plus.launchers.slurm.queue import active_jobs

    return active_jobs(job_ids)


class _Claimed(Exception):
    """Raised while acquiring: the folder is claimed by another run's SLURM jobs (message)."""


class WorkDirLock:
    """The lock of one folder for one run (see the module docstring); ``options.lock`` false:
    every method does nothing."""

    def __init__(
        self, folder: str | Path, options: RunOptions, *, run_id: str | None, command: str = ""
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.options = options
        # A run that goes on (its id given) waits for its own other processes without a limit:
        # the submitter about to exit when the finishing job starts, another `finish` of it.
        self.goes_on = run_id is not None
        self.run_id = run_id or new_run_id()
        self.command = command
        self._lock: filelock.BaseFileLock | None = None
        self._fd: int | None = None  # the lock's own descriptor, while held
        self._record: Holder | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``options.lock_timeout`` seconds while another run has
        it (saying so once).

        A folder that cannot be written is left to the run's checks, which name it with the run's
        other problems (:mod:`referdino_plus.preflight`): nothing can be written there, by this
        run or another one, so it goes on without the lock.

        Raises:
            WorkDirBusy: still held after the wait (one line: holder, file, what to do).
            WorkDirUnusable: the folder's file system has no locks.
        """
        if not self.options.lock:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._wait_for_lock()
        except OSError as err:
            if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                raise WorkDirUnusable(
                    err.errno,
                    f"cannot lock {self.path}: its file system has no file locks "
                    f"({err.strerror}); mount it with locks (e.g. Lustre: -o flock), or set "
                    "run.lock=false and make sure yourself that one run at a time uses this "
                    "work_dir",
                ) from err
            logger.debug("no lock in %s: %s (the run's checks report it)", self.folder, err)

    def _wait_for_lock(self) -> None:
        """:meth:`acquire` once the folder exists."""
        timeout = self.options.lock_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = False
        while True:
            busy, own = self._try_acquire()
            if busy is None:
                return
            if deadline is not None and time.monotonic() >= deadline and not own:
                advice = "" if timeout else "; set run.lock_timeout=SECONDS to wait for it"
                raise WorkDirBusy(f"{busy}{advice}; lock file: {self.path}")
            if not waiting:
                limit = (
                    "until it lets go"
                    if own
                    else "as long as it takes (run.lock_timeout=null)"
                    if deadline is None
                    else f"up to {timeout:g} s (run.lock_timeout)"
                )
                logger.warning("%s: waiting for it %s", busy, limit)
                waiting = True
            time.sleep(self.options.lock_poll_s)

    def _try_acquire(self) -> tuple[str | None, bool]:
        """One attempt: ``(None, _)`` when taken, else why not (one line), and whether another
        process of this same run, which goes on, holds it."""
        lock = filelock.FileLock(
            str(self.path),
            timeout=0,
            thread_local=False,
            fallback_to_soft=False,  # a soft lock would outlive a killed holder
            preserve_lock_file=True,
            on_acquired=self._claim,
        )
        try:
            lock.acquire()
        except filelock.Timeout:
            holder = read_holder(self.path)
            if holder is not None and self.goes_on and holder.run_id == self.run_id:
                return f"work_dir {self.folder} is held by this run ({holder.describe()})", True
            who = f"another run ({holder.describe()})" if holder else "another run"
            return f"work_dir {self.folder} is in use by {who}", False
        except _Claimed as claimed:
            return str(claimed), False
        self._lock = lock
        return None, False

    def _claim(self, fd: int) -> None:
        """With the kernel lock held: refuse a folder whose last run's SLURM jobs may still run;
        record this run as the holder."""
        size = os.fstat(fd).st_size
        last = _parse(os.pread(fd, size, 0)) if size else None
        same_run = last is not None and last.run_id == self.run_id
        if last is not None and not same_run:
            self._check_jobs_ended(last)
            if not last.released and last.host != socket.gethostname():
                logger.warning(
                    "%s: its last holder (%s) did not release it: it was killed, or it still runs "
                    "on %s and this file system does not share locks between machines "
                    "(docs/cluster.md: shared file systems)",
                    self.path,
                    last.describe(),
                    last.host,
                )
        jobs = list(last.slurm_jobs) if same_run and last is not None else []
        record = Holder(self.run_id, os.getpid(), socket.gethostname(), _now(), self.command, jobs)
        _write_record(fd, record)
        self._fd, self._record = fd, record

    def _check_jobs_ended(self, last: Holder) -> None:
        """Raises: _Claimed: some of ``last``'s SLURM jobs are (or may be) still queued or
        running."""
        if not last.slurm_jobs:
            return
        jobs = ", ".join(last.slurm_jobs)
        try:
            active = active_slurm_jobs(last.slurm_jobs)
        except OSError as err:
            raise _Claimed(
                f"work_dir {self.folder} was claimed by a launcher=slurm run ({last.describe()}) "
                f"whose SLURM job(s) {jobs} cannot be checked here ({err.strerror}): start this "
                f"run from a machine of the cluster, or, once those jobs have ended, delete "
                f"{self.path}"
            ) from None
        if active:
            raise _Claimed(
                f"work_dir {self.folder} is in use by a launcher=slurm run ({last.describe()}): "
                f"its SLURM job(s) {', '.join(active)} are still queued or running; wait for "
                f"them (squeue --jobs={','.join(last.slurm_jobs)}) or cancel them "
                f"(scancel {' '.join(last.slurm_jobs)})"
            )

    def record_jobs(self, job_ids: Sequence[str]) -> None:
        """Add SLURM jobs of this run to the record: the folder stays claimed while they may
        run, after this process has ended."""
        self._rewrite(lambda record: replace(record, slurm_jobs=[*record.slurm_jobs, *job_ids]))

    def forget_jobs(self) -> None:
        """Every SLURM job of this run has ended: the folder is no longer claimed by them."""
        self._rewrite(lambda record: replace(record, slurm_jobs=[]))

    def release(self) -> None:
        """Let go of the lock, recording that it was released (the SLURM jobs recorded stay)."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):  # the record is a courtesy; the unlock is what counts
            self._rewrite(lambda record: replace(record, released=True))
        self._lock.release()
        self._lock = self._fd = None

    def _rewrite(self, change: Callable[[Holder], Holder]) -> None:
        """Change the record, through the lock's own descriptor (closing another one could drop
        the lock where ``flock`` is emulated by POSIX locks, as on NFS)."""
        if self._lock is None or self._fd is None or self._record is None:
            return
        self._record = change(self._record)
        _write_record(self._fd, self._record)

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _write_record(fd: int, record: Holder) -> None:
    """Over the previous record, then cut to length: a full disk rarely stops it (the blocks are
    there), and a reader meets a whole record or one it cannot parse, never an empty file."""
    data = record.to_json()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


@contextlib.contextmanager
def hold_work_dir(
    folder: str | Path, options: RunOptions, *, run_id: str | None = None, command: str = ""
) -> Iterator[WorkDirLock]:
    """:class:`WorkDirLock` of ``folder`` held within the block (``run_id``: a run that goes on,
    e.g. the finishing of a SLURM run; ``None``: a new run)."""
    with WorkDirLock(folder, options, run_id=run_id, command=command) as lock:
        yield lock


def check_run_holds(folder: str | Path, run_id: str) -> None:
    """What a SLURM task of run ``run_id`` checks before it works in ``folder``: the lock file
    does not name another run (which took the folder once this run's jobs were no longer
    listed, or after the lock file was deleted).

    Raises:
        WorkDirBusy: naming the other run and the lock file.
    """
    path = Path(folder) / LOCK_FILE
    holder = read_holder(path)
    if holder is not None and holder.run_id != run_id:
        raise WorkDirBusy(
            f"work_dir {folder} is now used by another run ({holder.describe()}); this task of "
            f"run {run_id} stops without touching it; lock file: {path}"
        )
