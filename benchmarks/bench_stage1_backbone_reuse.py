"""Stage 1 timing: per-expression ``infer`` vs. ``encode_video`` once + ``infer_features``.

Runs the tiny fixture ReferDINO (random weights) on the fixture frames, on CPU by default:

    python benchmarks/bench_stage1_backbone_reuse.py --num-expressions 8 --num-frames 40

With ``--backbone swin_T_224_1k`` (or ``swin_B_384_22k``) the 32-wide fixture Swin is replaced
by a full-size one with random weights, for a realistic backbone share of the cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from stage1_referdino import (
    ReferDINO,
    ReferDINOConfig,
    build_referdino,
    load_model_config,
    load_referdino,
    preprocess,
)
from stage1_referdino.build import load_text_encoder
from stage1_referdino.model.lora import merge_lora_

logger = logging.getLogger("bench_stage1_backbone_reuse")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "referdino_tiny"
# Sentences cycled to make up the requested number of expressions.
SENTENCES = [
    "the child sitting on the bed",
    "a kid moving to the left. then jumping?",
    "the white cup on the table",
    "the person who walks away first",
    "the small dog running towards the door",
    "the boy that stopped and turned around",
    "the woman standing still behind the chair",
    "the red ball on the floor",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-expressions", type=int, default=8, help="expressions per video")
    parser.add_argument("--num-frames", type=int, default=40, help="frames (fixture frames cycled)")
    parser.add_argument("--short-side", type=int, default=None, help="input size (fixture: 96)")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="referdino_tiny dir")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--backbone",
        default=None,
        help="replace the fixture's 32-wide Swin by a named one (swin_T_224_1k, swin_B_384_22k) "
        "with random weights: realistic backbone cost, timing only",
    )
    return parser.parse_args()


def load_video(fixture: Path, num_frames: int, short_side: int | None) -> torch.Tensor:
    """[num_frames, 3, H, W] network input from the fixture frames (cycled if needed)."""
    with open(fixture / "fixture.json", encoding="utf-8") as f:
        meta = json.load(f)
    names = meta["frame_names"]
    frames = [
        Image.open(fixture / "frames" / f"{names[i % len(names)]}.jpg") for i in range(num_frames)
    ]
    return preprocess(frames, short_side=short_side or meta["short_side"])


def build_model(fixture: Path, backbone: str | None, device: str) -> ReferDINO:
    """The fixture model, or (``backbone`` given) its architecture with that Swin, random."""
    if backbone is None:
        checkpoint = fixture / "referdino_checkpoint.pth"
        return load_referdino(fixture / "model.yaml", checkpoint, device=device)
    values, _ = load_model_config(fixture / "model.yaml")
    values["backbone"] = backbone
    tokenizer, bert_config = load_text_encoder(fixture / "text_encoder")
    model = build_referdino(
        ReferDINOConfig.from_dict(values), tokenizer=tokenizer, bert_config=bert_config
    )
    merge_lora_(model)
    return model.to(device).eval()


def timed(fn, *args):
    """(result, wall seconds), synchronising CUDA."""
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.fixture, args.backbone, args.device)
    video = load_video(args.fixture, args.num_frames, args.short_side)
    expressions = [SENTENCES[i % len(SENTENCES)] for i in range(args.num_expressions)]
    logger.info(
        "video %s, %d expressions, device %s, %d threads",
        tuple(video.shape),
        len(expressions),
        args.device,
        torch.get_num_threads(),
    )
    model.infer(video[:2], expressions[0])  # warm-up

    # The two ways alternate expression by expression, so that load changes on the machine
    # affect both alike.
    feats, encode_seconds = timed(model.encode_video, video)
    infer_times, feature_times, identical = [], [], True
    for expression in expressions:
        direct, seconds = timed(model.infer, video, expression)
        infer_times.append(seconds)
        reused, seconds = timed(model.infer_features, feats, expression)
        feature_times.append(seconds)
        identical &= all(torch.equal(reused[k], direct[k]) for k in direct)

    per_expression = sum(infer_times)
    reuse = encode_seconds + sum(feature_times)
    logger.info(
        "per-expression infer:               %8.2f s (median %.2f s per expression)",
        per_expression,
        statistics.median(infer_times),
    )
    logger.info(
        "encode_video once + infer_features: %8.2f s (encode %.2f s, median %.2f s per expression)",
        reuse,
        encode_seconds,
        statistics.median(feature_times),
    )
    logger.info("speed-up: %.2fx; outputs bit-identical: %s", per_expression / reuse, identical)


if __name__ == "__main__":
    main()
