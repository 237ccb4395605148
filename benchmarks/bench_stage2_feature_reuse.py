"""Stage 2: SAM 2's per-expression way vs one shared video session, over all expressions.

The per-expression way (ReferDINO-Plus with SAM 2's own predictor) decodes the video and encodes
frames in every ``init_state`` and propagation pass; the shared way decodes once and encodes each
frame once per video. Both produce the same masks (checked here too).

    python benchmarks/bench_stage2_feature_reuse.py [--frames N] [--repeat-video K] [--device cpu]

Defaults: the tiny SAM 2.1 and the ``refine_tiny`` video of ``../shared/fixtures`` (40 frames,
6 expressions). ``--repeat-video K`` plays the video K times back to back (a longer video).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from referdino_plus.config import load_config  # noqa: E402
from rvos.legacy import read_legacy_npz  # noqa: E402
from rvos.masks import upsample_mask_logits  # noqa: E402
from stage2_sam2_refine.options import PromptKind  # noqa: E402
from stage2_sam2_refine.reference import build_reference_predictor, reference_refine  # noqa: E402
from stage2_sam2_refine.refine import build_refiner  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FIXTURES / "sam2_tiny" / "tiny_sam2.1.yaml"))
    parser.add_argument(
        "--checkpoint", default=str(FIXTURES / "sam2_tiny" / "weights_propagating.pt")
    )
    parser.add_argument("--legacy", default=str(FIXTURES / "refine_tiny/legacy_stage1/videoA.npz"))
    parser.add_argument(
        "--frames-dir", default=str(FIXTURES / "refine_tiny/mevis/JPEGImages/videoA")
    )
    parser.add_argument("--frames", type=int, default=None, help="use the first N frames only")
    parser.add_argument("--repeat-video", type=int, default=1, help="play the video K times")
    parser.add_argument("--prompt", default="mask", choices=["mask", "box", "point"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    legacy = read_legacy_npz(args.legacy)
    source = sorted(Path(args.frames_dir).glob("*.jpg"))[: args.frames]
    num_frames = len(source) * args.repeat_video
    proposals = {}
    for exp_id, arrays in legacy.expressions.items():
        tiled = {
            k: np.concatenate([v[: len(source)]] * args.repeat_video) for k, v in arrays.items()
        }
        proposals[exp_id] = SimpleNamespace(
            scores=tiled["scores"],
            boxes=tiled["boxes"],
            masks=upsample_mask_logits(tiled["masks"], legacy.size),
        )
    options = dataclasses.replace(
        load_config().stage2,
        model=args.model,
        checkpoint=args.checkpoint,
        prompt=PromptKind(args.prompt),
    )

    with tempfile.TemporaryDirectory() as tmp:
        frame_dir = Path(tmp)
        for index in range(num_frames):
            shutil.copy(source[index % len(source)], frame_dir / f"{index:05d}.jpg")
        frame_paths = sorted(frame_dir.glob("*.jpg"))

        stock = build_reference_predictor(args.model, args.checkpoint, device=args.device)
        refiner = build_refiner(options, device=args.device)

        _synchronize(args.device)
        start = time.perf_counter()
        expected = {
            exp_id: reference_refine(
                stock,
                frame_dir,
                scores=p.scores,
                boxes=p.boxes,
                masks=p.masks,
                options=options,
            )
            for exp_id, p in proposals.items()
        }
        _synchronize(args.device)
        per_expression = time.perf_counter() - start

        start = time.perf_counter()
        results = dict(refiner.refine_video(frame_paths, proposals, video_id="bench"))
        _synchronize(args.device)
        shared = time.perf_counter() - start

    identical = all(np.array_equal(results[e].masks, expected[e].masks) for e in proposals)
    objects = sum(r.num_objects for r in results.values())
    print(
        f"video: {num_frames} frames, {len(proposals)} expressions, {objects} objects, "
        f"prompt={args.prompt}, device={args.device}, torch threads={torch.get_num_threads()}"
    )
    print(f"per-expression (SAM 2 init_state each time): {per_expression:8.2f} s")
    print(f"shared session (frames + features once):     {shared:8.2f} s")
    print(f"speed-up: {per_expression / shared:.2f}x   masks identical: {identical}")


if __name__ == "__main__":
    main()
