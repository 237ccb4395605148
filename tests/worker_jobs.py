"""Jobs for the worker tests (importable by spawned worker processes)."""

import os
import time
from pathlib import Path


def build_marker_job(config, device):
    """Writes ``<out>/<video>.<device>``; fails on videos listed in ``config["fail"]``."""
    out = Path(config["out"])

    def process(video_id):
        if video_id in config.get("fail", ()):
            raise RuntimeError(f"cannot process {video_id}")
        if video_id in config.get("die", ()):
            os._exit(3)
        import torch

        marker = out / f"{video_id}.{device.replace(':', '')}"
        marker.write_text(f"{os.getpid()} {torch.get_num_threads()}")

    return process


def build_broken_job(config, device):
    raise FileNotFoundError("checkpoint missing: run download_ckpts.sh")


def build_writing_job(config, device):
    """Notes each video in ``<log>/<video>`` (it is computed), waits ``delay`` seconds, then
    writes 64 kB atomically to ``<folder>/<video>.out``, the folder ``config["folders"]`` names
    for the video's first letter."""
    from rvos.io import atomic_output

    def process(video_id):
        (Path(config["log"]) / video_id).write_text(device)
        time.sleep(config.get("delay", 0))
        target = Path(config["folders"][video_id[0]]) / f"{video_id}.out"
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"x" * 65536)

    return process


def build_progress_job(config, device):
    """Shows a progress bar per video, as a stage's worker would."""
    from rvos.progress import progress_bar

    def process(video_id):
        for _ in progress_bar(range(3), desc=f"inner progress of {video_id}"):
            time.sleep(0.01)

    return process


def build_holding_job(config, device):
    """Writes ``<out>/<video>.pid`` (its process id), then, inside an atomic write of
    ``<out>/<video>.out``, waits ``config["hold_s"]`` seconds: a stop arrives mid-write."""
    from rvos.io import atomic_output

    out = Path(config["out"])

    def process(video_id):
        with atomic_output(out / f"{video_id}.out") as tmp:
            tmp.write_bytes(b"x" * 65536)
            (out / f"{video_id}.pid").write_text(str(os.getpid()))
            time.sleep(config["hold_s"])

    return process
