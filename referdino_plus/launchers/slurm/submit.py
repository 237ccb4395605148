"""Submitting a run to SLURM: the checks made before (paths the nodes can reach, the SLURM
commands), the job array of shard tasks, and the job that finishes a run nobody waits for."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from referdino_plus.config import PipelineConfig, SlurmOptions, to_yaml
from referdino_plus.launchers.slurm.finish import finish_recorded_run
from referdino_plus.launchers.slurm.record import SubmittedRun
from referdino_plus.launchers.slurm.task import ShardTask, code_environment
from referdino_plus.pipeline import PipelineError
from rvos.weights import is_hub_reference

logger = logging.getLogger(__name__)


def cluster_paths(cfg: PipelineConfig, stages: Sequence[int]) -> dict[str, str]:
    """``{key: path}`` of every file and folder the tasks of ``stages`` read or write."""
    paths = {
        "work_dir": cfg.work_dir,
        "submission_dir": cfg.submission_dir,
        "data.root": cfg.data.root,
        "launcher.log_dir": cfg.launcher.slurm.log_dir,  # as docs/cluster.md spells it (launcher.slurm.log_dir)
    }
    legacy_dir = cfg.stage1.legacy_dir
    if legacy_dir and (1 in stages or 2 in stages):
        paths["stage1.legacy_dir"] = legacy_dir
    if 1 in stages and not legacy_dir:
        paths["stage1.checkpoint"] = cfg.stage1.checkpoint
        if Path(cfg.stage1.model).suffix in (".yaml", ".yml"):
            paths["stage1.model"] = cfg.stage1.model
        if cfg.stage1.text_encoder:
            paths["stage1.text_encoder"] = cfg.stage1.text_encoder
    if 2 in stages:
        checkpoint = cfg.stage2.checkpoint
        # SAM 3's weights may be a hub id (e.g. facebook/sam3), which names no file here: each
        # node reads it from the shared Hugging Face cache (docs/trackers.md, SAM 3).
        if str(cfg.stage2.tracker) != "sam3" or Path(checkpoint).expanduser().exists():
            paths["stage2.checkpoint"] = checkpoint
        if Path(cfg.stage2.model).suffix in (".yaml", ".yml"):
            paths["stage2.model"] = cfg.stage2.model
    # A hub reference (hf://...) names no file here either: the same shared cache (HF_HOME).
    return {key: value for key, value in paths.items() if not is_hub_reference(value)}


def check_cluster_paths(cfg: PipelineConfig, stages: Sequence[int]) -> None:
    """Every path a task of ``stages`` uses is absolute: the nodes share the filesystem, not this
    shell's folder. (That the files are there is the preflight's part, as for a local run.)

    Raises:
        ValueError: one line naming the first relative path's key.
    """
    for key, value in cluster_paths(cfg, stages).items():
        if not Path(value).is_absolute():
            raise ValueError(
                f"{key}={value}: launcher=slurm needs an absolute path, on a filesystem the "
                "cluster's nodes share"
            )


def check_slurm_commands() -> None:
    """Raises: PipelineError: ``sbatch`` or ``squeue`` is not on this machine."""
    for command in ("sbatch", "squeue"):
        if shutil.which(command) is None:
            raise PipelineError(
                f"launcher=slurm: `{command}` not found: submit from a machine of the SLURM "
                "cluster (a local test cluster: sudo bash scripts/slurm_local.sh start)"
            )


def build_executor(options: SlurmOptions, *, gpus: int) -> submitit.AutoExecutor:
    """A submitit executor with ``options``' resources, asking for ``gpus`` GPUs per job."""
    executor = submitit.AutoExecutor(
        folder=options.log_dir, cluster="slurm", slurm_max_num_timeout=options.max_requeues
    )
    executor.update_parameters(
        name=options.job_name,
        timeout_min=options.timeout_min,
        cpus_per_task=options.cpus_per_task,
        gpus_per_node=gpus or None,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_qos=options.qos,
        slurm_setup=list(options.setup) or None,
        slurm_additional_parameters=dict(options.sbatch_args) or None,
    )
    return executor


def submit_array(
    cfg: PipelineConfig,
    stages: Sequence[int],
    shards: list[list[str]],
    overwrite: bool,
    *,
    evaluate: bool,
    run_id: str,
    command: str,
) -> SubmittedRun:
    """Submit one task per shard of run ``run_id`` (submitted by ``command``); save and return
    the run's record.

    Raises:
        PipelineError: sbatch refused the job (its message).
    """
    options = cfg.launcher.slurm
    Path(options.log_dir).mkdir(parents=True, exist_ok=True)
    executor = build_executor(options, gpus=options.gpus_per_task)
    tasks = [
        ShardTask(cfg, sorted(stages), index, video_ids, overwrite, code_environment(), run_id)
        for index, video_ids in enumerate(shards)
    ]
    with sbatch_errors():
        jobs = executor.submit_array(tasks)
    run = SubmittedRun(
        job_ids=[job.job_id for job in jobs],
        shards=shards,
        stages=sorted(stages),
        log_dir=options.log_dir,
        config=to_yaml(cfg),
        evaluate=evaluate,
        run_id=run_id,
        command=command,
    )
    run.save()
    logger.info(
        "submitted %d task(s) as SLURM job %s; logs: %s/%s_<task>_0_log.err",
        len(jobs),
        run.array_id,
        run.log_dir,
        run.array_id,
    )
    return run


def submit_finishing_job(run: SubmittedRun, options: SlurmOptions) -> str:
    """Submit the job that finishes ``run`` once its tasks have ended; returns its job id."""
    executor = build_executor(options, gpus=0)
    executor.update_parameters(
        name=f"{options.job_name}-finish", slurm_dependency=f"afterany:{':'.join(run.array_ids)}"
    )
    with sbatch_errors():
        job = executor.submit(finish_recorded_run, str(run.record_path))
    return job.job_id


@contextlib.contextmanager
def sbatch_errors() -> Iterator[None]:
    """Turn a refused submission into a one-line :class:`PipelineError` (submitit would also
    print sbatch's error output)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (FailedJobError, FailedSubmissionError, OSError) as err:
        lines = [line for line in str(err).splitlines() if "error" in line.lower()]
        reason = lines[-1].strip() if lines else " ".join(str(err).split())
        raise PipelineError(f"sbatch refused the job: {reason}") from None
