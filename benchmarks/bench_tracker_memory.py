"""Stage 2 memory on long clips: the peak resident memory of one tracker process per clip length.

Each clip length runs in a fresh process: the tracker is built (the fixture's tiny SAM 2.1 at
256 px by default), a generated clip of small frames is opened from a sequence that draws a frame
when indexed (so the input itself takes no memory), and one expression with one object prompted
mid-clip is tracked forward and in reverse; each frame's masks are dropped once computed, as the
stage-2 runner hands them on. The process's peak resident set size (``ru_maxrss``) is printed per
length, with the bounds in force (``stage2.feature_cache_frames``) and, for comparison, with the
image features of every frame kept (``--cache-frames null``):

    python benchmarks/bench_tracker_memory.py                       # 100 and 400 frames, sam2
    python benchmarks/bench_tracker_memory.py --frames 100 1000 --tracker samurai
    python benchmarks/bench_tracker_memory.py --cache-frames null    # every frame's features
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import real_size  # noqa: E402

TINY_MODEL = real_size.FIXTURES / "sam2_tiny" / "tiny_sam2.1.yaml"
TINY_CHECKPOINT = real_size.FIXTURES / "sam2_tiny" / "weights_propagating.pt"
HEIGHT, WIDTH = 120, 160  # the generated frames


class GeneratedClip(Sequence):
    """``num_frames`` frames of a bright square moving over noise, drawn when indexed."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int):
        from PIL import Image

        if not isinstance(index, int) or not 0 <= index < self.num_frames:
            raise IndexError(index)
        pixels = np.random.default_rng(index).integers(0, 80, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        x = 10 + abs((index % 200) - 100)  # 10 .. 110
        pixels[40:80, x : x + 40] = 230
        return Image.fromarray(pixels)


def measure_one(num_frames: int, *, tracker_name: str, cache_frames: int | None) -> dict:
    """Track one expression on a generated clip in this process; its figures."""
    import torch

    from referdino_plus.config import load_config
    from stage2_sam2_refine.options import Tracker
    from stage2_sam2_refine.tracker import ObjectPrompt, build_tracker

    torch.set_num_threads(1)
    options = dataclasses.replace(
        load_config().stage2,
        model=str(TINY_MODEL),
        checkpoint=str(TINY_CHECKPOINT),
        tracker=Tracker(tracker_name),
        feature_cache_frames=cache_frames,
    )
    tracker = build_tracker(options, device="cpu")
    clip = GeneratedClip(num_frames)
    session = tracker.open_video(clip, video_id=f"clip{num_frames}")
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    start = num_frames // 2
    x = 10 + abs((start % 200) - 100)
    mask[40:80, x : x + 40] = True
    started = time.perf_counter()
    steps = foreground = 0
    for frame in session.track([ObjectPrompt(obj_id=0, frame_idx=start, mask=mask)]):
        steps += 1
        foreground += int(frame.masks.sum())  # the masks are handed on, not kept
    return {
        "frames": num_frames,
        "steps": steps,
        "foreground_pixels": foreground,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "features_cached": len(session.video.features),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--tracker", choices=["sam2", "samurai"], default="sam2")
    parser.add_argument(
        "--cache-frames",
        default="config",
        help="stage2.feature_cache_frames: a number, null (every frame), or config (the YAML's)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's length
    args = parser.parse_args()
    if args.cache_frames == "config":
        from referdino_plus.config import load_config

        cache_frames = load_config().stage2.feature_cache_frames
    else:
        cache_frames = None if args.cache_frames == "null" else int(args.cache_frames)
    if args.one is not None:
        print(
            json.dumps(measure_one(args.one, tracker_name=args.tracker, cache_frames=cache_frames))
        )
        return
    rows = []
    for num_frames in args.frames:
        command = [sys.executable, __file__, "--one", str(num_frames), "--tracker", args.tracker]
        command += ["--cache-frames", "null" if cache_frames is None else str(cache_frames)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"tracker {args.tracker}, tiny SAM 2.1 at 256 px, feature_cache_frames={cache_frames}")
    print("| frames | steps | peak RSS (MB) | features cached at the end | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['frames']} | {row['steps']} | {row['peak_rss_mb']} | "
            f"{row['features_cached']} | {row['seconds']} |"
        )


if __name__ == "__main__":
    main()
