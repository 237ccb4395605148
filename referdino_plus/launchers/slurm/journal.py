"""The progress journal of an array task: one line per event (a stage set up, a video started,
done or failed) in ``<launcher.slurm.log_dir>/<job>_progress.jsonl``, appended as it happens,
so that a task SLURM ends can be reported with the video it was on."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from referdino_plus.stages import get_stage


def progress_path(log_dir: str | Path, job_id: str) -> Path:
    """Where the task ``job_id`` (``<array>_<task>``) records its events."""
    return Path(log_dir) / f"{job_id}_progress.jsonl"


def record_event(path: Path, stage: int, event: str, video_id: str | None = None) -> None:
    """Append one event line, opening and closing the file each time: a killed task loses
    nothing, and other nodes see the line once it is closed."""
    line = json.dumps({"stage": stage, "event": event, "video_id": video_id, "time": time.time()})
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


@dataclass(frozen=True)
class TaskPosition:
    """Where a task was at its last event: in ``stage``, on ``video_id``, or else loading the
    stage's models (``loading``) or between two videos."""

    stage: int
    video_id: str | None
    loading: bool

    def describe(self) -> str:
        stage = get_stage(self.stage).name
        if self.video_id is not None:
            return f"while on video {self.video_id!r} of {stage}"
        if self.loading:
            return f"while loading the models of {stage}"
        return f"between two videos of {stage}"


def last_position(path: Path) -> TaskPosition | None:
    """The position after a task's last recorded event (``None``: it recorded none)."""
    if not path.is_file():
        return None
    position = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        kind, stage = event["event"], event["stage"]
        if kind == "start":
            position = TaskPosition(stage, event["video_id"], loading=False)
        else:
            position = TaskPosition(stage, None, loading=kind == "stage")
    return position


def describe_position(position: TaskPosition | None) -> str:
    return position.describe() if position else "before its first stage"
