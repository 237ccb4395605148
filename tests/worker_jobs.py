"""Jobs for the worker tests (importable by spawned worker processes)."""

import os
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
