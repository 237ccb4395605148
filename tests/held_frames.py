"""A run held at one frame: the frame's file becomes a named pipe, so a run (or a SLURM task)
that opens it waits there until the test puts the frame back."""

from __future__ import annotations

import os
from pathlib import Path


def frame_path(root: Path, video_id: str, frame: str) -> Path:
    return root / "JPEGImages" / video_id / f"{frame}.jpg"


def hold_frame(root: Path, video_id: str, frame: str) -> bytes:
    """Replace the frame of split ``root`` with a named pipe; returns the frame's bytes."""
    path = frame_path(root, video_id, frame)
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    return data


def release_frame(root: Path, video_id: str, frame: str, data: bytes) -> None:
    """Put back the frame :func:`hold_frame` took (for the runs that come next)."""
    path = frame_path(root, video_id, frame)
    path.unlink()
    path.write_bytes(data)
