"""What ``squeue`` says of jobs: their states (ended jobs too, for the cluster's ``MinJobAge``),
and which of them SLURM may still run. Imports nothing of the pipeline: the lock of a
``work_dir`` asks it about the jobs of the run that claims the folder
(:mod:`referdino_plus.workdir_lock`)."""

from __future__ import annotations

import errno
import logging
import subprocess
from collections.abc import Sequence
from typing import NamedTuple

logger = logging.getLogger(__name__)

# squeue states after which a job does not run again (anything else may still run: pending,
# running, completing, requeued, suspended, ...).
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})


class QueueEntry(NamedTuple):
    """A job as ``squeue`` lists it."""

    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ...
    reason: str  # why it waits (e.g. Resources, Priority, PartitionConfig); "None" if it does not


def queue_states(job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
    """The jobs ``squeue`` lists (ended ones too, for ``MinJobAge``), by job id; ``None`` when
    squeue could not answer (the controller busy or restarting)."""
    array_ids = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T %r"]
    proc = subprocess.run(
        [*command, f"--jobs={','.join(array_ids)}"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}  # every job has left the queue
        logger.warning("squeue failed, asking again later: %s", " ".join(proc.stderr.split()))
        return None
    return parse_queue(proc.stdout)


def parse_queue(text: str) -> dict[str, QueueEntry]:
    """``squeue --array --format='%i %T %r'`` lines by job id (``<array>_<task>``)."""
    entries = {}
    for line in text.splitlines():
        fields = line.split(maxsplit=2)
        if len(fields) >= 2:
            entries[fields[0]] = QueueEntry(fields[1], fields[2] if len(fields) == 3 else "None")
    return entries


def active_jobs(job_ids: Sequence[str]) -> list[str]:
    """Those of ``job_ids`` (arrays: their tasks) that SLURM may still run: queued, running,
    requeued or suspended.

    Raises:
        OSError: ``squeue`` is not installed here, or did not answer.
    """
    try:
        states = queue_states(job_ids)
    except FileNotFoundError as err:
        raise OSError(err.errno, "squeue is not installed here") from err
    if states is None:
        raise OSError(errno.EAGAIN, "squeue did not answer")
    return sorted(job for job, entry in states.items() if entry.state not in ENDED_STATES)
