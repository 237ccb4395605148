"""Stage 1 timing: ReferDINO per expression (``infer``) vs the backbone once per video.

Both ways run what the stage-1 runner runs for each expression: the model, then the record's
mask post-processing (upsample every query's mask logits to frame size, threshold, run-length
encode; on a GPU where the logits are). By default the model is the real ``mevis_swinb`` (Swin-B,
BERT-base, 900 queries) with generated random weights (``real_size.py``), on a generated clip:

    python benchmarks/bench_stage1_backbone_reuse.py --frames 3 --expressions 6
    python benchmarks/bench_stage1_backbone_reuse.py --model tiny      # the fixture model

A second part times the post-processing alone at MeViS size (``--post-frames`` frames of
``--frame-size``, ``--post-queries`` queries) on ``--device``, against the model time per frame
measured in the first part.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clips  # noqa: E402
import real_size  # noqa: E402
from referdino_plus.config import load_config  # noqa: E402
from stage1_referdino import ReferDINO, load_referdino, preprocess  # noqa: E402
from stage1_referdino.postprocess import proposals_from_outputs  # noqa: E402
from timing import (  # noqa: E402
    COMPARISON_HEADERS,
    ComponentTimer,
    comparison_rows,
    format_seconds,
    format_table,
    synchronize,
)

logger = logging.getLogger("bench_stage1")

TINY = real_size.FIXTURES / "referdino_tiny"
# Components, as the table names them.
BACKBONE, TRANSFORMER, POSTPROCESS = "backbone", "transformer", "postprocess"
COMPONENT_LABELS = [
    (BACKBONE, "backbone (Swin, input projections)"),
    (TRANSFORMER, "text encoder, transformer and heads"),
    (POSTPROCESS, "mask post-processing (upsample, threshold, RLE)"),
]
# The record is made with the pipeline's own stage-1 settings (configs/pipeline.yaml).
RECORD_OPTIONS = load_config([]).stage1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=["real", "tiny"], default="real", help="mevis_swinb or the fixture"
    )
    parser.add_argument("--frames", type=int, default=3, help="frames of the clip")
    parser.add_argument("--expressions", type=int, default=6, help="expressions of the clip")
    parser.add_argument("--frame-size", type=clips.parse_size, default=(720, 1280), help="WxH")
    parser.add_argument("--short-side", type=int, default=360, help="network input, shorter side")
    parser.add_argument("--post-frames", type=int, default=80, help="post-processing part: frames")
    parser.add_argument("--post-queries", type=int, default=15, help="... and queries (0: skip)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work-dir", type=Path, default=None, help="random weights go here")
    return parser.parse_args(argv)


def build_model(kind: str, work_dir: Path, device: str) -> ReferDINO:
    """The random-weight ``mevis_swinb`` written to ``work_dir`` (``real``) or the fixture."""
    if kind == "tiny":
        return load_referdino(TINY / "model.yaml", TINY / "referdino_checkpoint.pth", device=device)
    files = real_size.write_referdino(work_dir)
    return load_referdino(
        files.model, files.checkpoint, text_encoder=files.text_encoder, device=device
    )


def make_record(out: dict[str, torch.Tensor], frame_size: tuple[int, int]):
    """The stage-1 record entry of one expression, as the runner makes it."""
    return proposals_from_outputs(
        out["pred_logits"][..., 0].sigmoid().cpu().numpy(),
        out["pred_boxes"].cpu().numpy(),
        out["pred_masks"],
        frame_size,
        top_k=RECORD_OPTIONS.top_k,
        obj_threshold=RECORD_OPTIONS.obj_threshold,
    )


def same_record(a, b) -> bool:
    """Whether two record entries hold the same queries, scores, boxes and runs."""
    return all(
        np.array_equal(x, y)
        for x, y in [
            (a.query_ids, b.query_ids),
            (a.scores, b.scores),
            (a.boxes, b.boxes),
            (a.masks.counts, b.masks.counts),
            (a.masks.offsets, b.masks.offsets),
            (a.answer.counts, b.answer.counts),
        ]
    )


def compare_ways(
    model: ReferDINO, video: torch.Tensor, expressions: list[str], frame_size: tuple[int, int]
) -> tuple[ComponentTimer, ComponentTimer, bool]:
    """Run every expression both ways, alternating (load changes on the machine hit both).

    Returns:
        ``(per-expression timer, shared timer, outputs identical)``.
    """
    device = model.device
    per_expression, shared = ComponentTimer(device), ComponentTimer(device)
    with torch.inference_mode():
        with shared.measure(BACKBONE):
            features = model.encode_video(video)
        identical = True
        for expression in expressions:
            with per_expression.measure(BACKBONE):
                own_features = model.encode_video(video)
            with per_expression.measure(TRANSFORMER):
                direct = model.infer_features(own_features, expression)
            del own_features
            with per_expression.measure(POSTPROCESS):
                direct_record = make_record(direct, frame_size)
            with shared.measure(TRANSFORMER):
                reused = model.infer_features(features, expression)
            with shared.measure(POSTPROCESS):
                reused_record = make_record(reused, frame_size)
            identical &= all(torch.equal(reused[k], direct[k]) for k in direct)
            identical &= same_record(reused_record, direct_record)
    return per_expression, shared, identical


def model_like_logits(
    num_frames: int, num_queries: int, size: tuple[int, int], device: torch.device, seed: int = 0
) -> torch.Tensor:
    """``[T, Q, h, w] float32`` smooth random blobs (a model's mask logits at stride 4)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_frames, num_queries, 6, 10, generator=generator) * 8
    logits = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic")
    return logits.to(device)


def time_postprocessing(
    num_frames: int,
    num_queries: int,
    frame_size: tuple[int, int],
    logits_size: tuple[int, int],
    device: torch.device,
) -> dict[str, float]:
    """Seconds of one expression's record post-processing, made where the logits are (on
    ``device``), as the runner makes it.

    Returns:
        ``{"device": seconds}`` (the way the tables name it).
    """
    logits = model_like_logits(num_frames, num_queries, logits_size, device)
    scores = np.full((num_frames, num_queries), 0.5, dtype=np.float32)
    boxes = np.zeros((num_frames, num_queries, 4), dtype=np.float32)
    options = {"top_k": RECORD_OPTIONS.top_k, "obj_threshold": RECORD_OPTIONS.obj_threshold}
    proposals_from_outputs(scores[:2], boxes[:2], logits[:2], frame_size, **options)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    proposals_from_outputs(scores, boxes, logits, frame_size, **options)
    synchronize(device)
    return {"device": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        start = time.perf_counter()
        model = build_model(args.model, Path(tmp), args.device)
        build_seconds = time.perf_counter() - start
    height, width = args.frame_size
    frames, _ = clips.synthetic_clip(args.frames, height, width)
    video = preprocess(frames, short_side=args.short_side)
    expressions = [clips.SENTENCES[i % len(clips.SENTENCES)] for i in range(args.expressions)]
    name = "mevis_swinb (Swin-B, BERT-base, 900 queries)" if args.model == "real" else "tiny"
    logger.info(
        "stage 1: ReferDINO %s, random weights (written and loaded in %s); %d frames of %dx%d "
        "-> network input %dx%d; %d expressions; device %s, %d torch threads, "
        "1-minute load average %.2f",
        name,
        format_seconds(build_seconds),
        args.frames,
        width,
        height,
        video.shape[3],
        video.shape[2],
        len(expressions),
        args.device,
        torch.get_num_threads(),
        os.getloadavg()[0],
    )
    # Warm-up: the first calls at a new size pay for kernel selection and allocations; neither
    # way should be charged for them.
    with torch.inference_mode():
        make_record(model.infer(video, expressions[0]), (height, width))

    per_expression, shared, identical = compare_ways(model, video, expressions, (height, width))
    logger.info(
        "\n%s\n",
        format_table(COMPARISON_HEADERS, comparison_rows(COMPONENT_LABELS, per_expression, shared)),
    )
    ratio = per_expression.total() / shared.total()
    logger.info(
        "stage 1 ratio: %.2fx (per-expression %s / shared %s); outputs identical: %s",
        ratio,
        format_seconds(per_expression.total()),
        format_seconds(shared.total()),
        "yes (bit-identical logits, boxes, mask logits and records)" if identical else "NO",
    )

    if args.post_queries > 0 and args.post_frames > 0:
        model_seconds = shared.seconds[BACKBONE] + shared.seconds[TRANSFORMER]
        model_per_frame = model_seconds / (len(expressions) * args.frames)
        logits_size = (-(-video.shape[2] // 4), -(-video.shape[3] // 4))
        seconds = time_postprocessing(
            args.post_frames, args.post_queries, (height, width), logits_size, model.device
        )
        rows = [
            [
                f"{way} way",
                format_seconds(value),
                f"{1000 * value / args.post_frames:.1f} ms",
                f"{100 * value / (value + model_per_frame * args.post_frames):.0f}%",  # per frame
            ]
            for way, value in seconds.items()
        ]
        rows.append(
            ["model (shared features, measured above)", "-", f"{1000 * model_per_frame:.1f} ms", ""]
        )
        logger.info(
            "stage-1 mask post-processing of one expression: %d frames of %dx%d, %d queries "
            "(logits %dx%d), device %s\n\n%s\n",
            args.post_frames,
            width,
            height,
            args.post_queries,
            logits_size[1],
            logits_size[0],
            args.device,
            format_table(
                [
                    "",
                    f"{args.post_frames} frames",
                    "per expression-frame",
                    "share of the frame's time",
                ],
                rows,
            ),
        )
    if not identical:
        raise SystemExit("stage 1: the two ways disagree")


if __name__ == "__main__":
    main()
