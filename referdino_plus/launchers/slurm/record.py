"""The record of a submitted job array, ``<launcher.slurm.log_dir>/<array>_run.json``: what the
waiting process, the finishing job or ``run_pipeline.py finish`` collects."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from referdino_plus.pipeline import PipelineError
from rvos.io import atomic_output


@dataclass
class SubmittedRun:
    """A submitted array: what the waiting process, or the finishing job, collects. Saved as
    ``<log_dir>/<array>_run.json``."""

    job_ids: list[str]  # task i's SLURM job id: <array>_<i> (a lone task: <job>)
    shards: list[list[str]]  # task i's videos
    stages: list[int]
    log_dir: str
    config: str  # the resolved configuration (YAML)
    evaluate: bool  # score the archives (the preflight found the ground truth complete)
    finishing_job_id: str | None = None  # launcher.slurm.wait=false: the job finishing the run
    # The run's id in work_dir's lock (referdino_plus.workdir_lock): its tasks and whatever
    # finishes it work inside that run's claim. "": a record from before run ids.
    run_id: str = ""
    command: str = ""  # the command line that submitted the run (and resumes it)

    @property
    def array_id(self) -> str:
        return self.job_ids[0].split("_")[0]

    @property
    def array_ids(self) -> list[str]:
        """The SLURM job array(s) of the tasks."""
        return sorted({job_id.split("_")[0] for job_id in self.job_ids})

    @property
    def record_path(self) -> Path:
        return Path(self.log_dir) / f"{self.array_id}_run.json"

    def save(self) -> Path:
        with atomic_output(self.record_path) as tmp:
            tmp.write_text(json.dumps(self.__dict__, indent=1))
        return self.record_path

    @classmethod
    def load(cls, path: str | Path) -> SubmittedRun:
        """Raises: PipelineError: not a run record."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise PipelineError(f"{path}: not a run record of launcher=slurm ({err})") from None

    def jobs(self) -> list[submitit.SlurmJob]:
        return [submitit.SlurmJob(folder=self.log_dir, job_id=job_id) for job_id in self.job_ids]

    def finish_command(self) -> str:
        """The command that waits for the tasks and finishes the run (archives, scores)."""
        return shlex.join([sys.executable, "-m", "referdino_plus", "finish", str(self.record_path)])

    def describe(self) -> str:
        """What ``launcher.slurm.wait=false`` submitted, and the command that finishes the run."""
        return "\n".join(
            [
                f"job array: {self.array_id} ({len(self.job_ids)} tasks), logs in {self.log_dir}",
                f"finishing job: {self.finishing_job_id} (writes the archives once the array "
                "has ended)",
                f"finish by hand: {self.finish_command()}",
            ]
        )
