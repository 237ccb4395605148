"""Stage 2 timing: SAM 2's per-expression way vs one shared video session, over all expressions.

The per-expression way (ReferDINO-Plus with SAM 2's own predictor) decodes the video and encodes
frames in every ``init_state`` and propagation pass; the shared way decodes once and encodes each
frame once per video. Both produce the same masks (checked here too). By default the model is a
real SAM 2.1 at 1024 px with generated random weights (``real_size.py``), on a generated clip
whose moving shapes are the stage-1 proposals:

    python benchmarks/bench_stage2_feature_reuse.py --model sam2.1_hiera_l --objects 1,1,1,1
    python benchmarks/bench_stage2_feature_reuse.py --model tiny      # the fixture's tiny SAM 2.1

``--objects 1,2,1`` gives three expressions keeping one, two and one query.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test oracles

from oracles.sam2_reference import build_reference_predictor, reference_refine  # noqa: E402

import clips  # noqa: E402
import real_size  # noqa: E402
from referdino_plus.config import load_config  # noqa: E402
from stage2_sam2_refine.options import PromptKind  # noqa: E402
from stage2_sam2_refine.refine import Refiner  # noqa: E402
from stage2_sam2_refine.tracker import build_tracker  # noqa: E402
from timing import (  # noqa: E402
    COMPARISON_HEADERS,
    ComponentTimer,
    comparison_rows,
    format_seconds,
    format_table,
)

logger = logging.getLogger("bench_stage2")

TINY_MODEL = real_size.FIXTURES / "sam2_tiny" / "tiny_sam2.1.yaml"
TINY_CHECKPOINT = real_size.FIXTURES / "sam2_tiny" / "weights_propagating.pt"
# Components, as the table names them; "other" is what no component took (prompts, bookkeeping,
# thresholding the logits).
FRAMES, ENCODER, TRACKING, POSTPROCESS, OTHER = "frames", "encoder", "tracking", "post", "other"
COMPONENT_LABELS = [
    (FRAMES, "frames: decode, resize"),
    (ENCODER, "image encoder"),
    (TRACKING, "per-object tracking (memory attention, decoder, memory encoder)"),
    (POSTPROCESS, "mask post-processing and encoding"),
    (OTHER, "other (prompts, thresholding, bookkeeping)"),
]
# Predictor methods timed as each component (both predictors; the first two differ by way).
PREDICTOR_COMPONENTS = {
    "forward_image": ENCODER,
    "_run_single_frame_inference": TRACKING,
    "_run_memory_encoder": TRACKING,
    "_get_orig_video_res_output": POSTPROCESS,
}
# Proposal scores: kept queries score KEPT_SCORE (PEAK_SCORE on their prompt frame), the others
# IGNORED_SCORE, around the 0.275 threshold of configs/pipeline.yaml.
KEPT_SCORE, PEAK_SCORE, IGNORED_SCORE = 0.8, 0.9, 0.1


def parse_objects(text: str) -> list[int]:
    """``1,2,1`` -> objects kept per expression."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,1, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative counts, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="sam2.1_hiera_l",
        choices=[*real_size.SAM2_CHECKPOINT_NAMES, "tiny"],
        help="a SAM 2.1 model (random weights) or the fixture's tiny one",
    )
    parser.add_argument("--frames", type=int, default=3, help="frames of the clip")
    parser.add_argument("--frame-size", type=clips.parse_size, default=(720, 1280), help="WxH")
    parser.add_argument(
        "--objects", type=parse_objects, default=[1, 1, 1, 1], help="kept queries per expression"
    )
    parser.add_argument("--queries", type=int, default=15, help="stage-1 queries per expression")
    parser.add_argument("--prompt", default="mask", choices=[k.value for k in PromptKind])
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work-dir", type=Path, default=None, help="random weights go here")
    return parser.parse_args(argv)


def make_proposals(
    masks: np.ndarray, objects: list[int], num_queries: int
) -> dict[str, SimpleNamespace]:
    """Stage-1 proposals of each expression from the clip's object masks.

    Expression ``e`` keeps its first ``objects[e]`` queries (query ``q`` follows object
    ``(e + q) % K``, prompted on frame ``(e + q) % T``); the other queries score below the
    threshold and have empty masks.

    Args:
        masks: ``[T, K, H, W] bool`` the clip's objects.
    Returns:
        ``exp_id -> proposals`` with ``scores [T, N]``, ``boxes [T, N, 4]``, ``masks [T, N, H, W]``.
    """
    num_frames, num_objects, height, width = masks.shape
    proposals = {}
    for exp, kept in enumerate(objects):
        if kept > num_queries:
            raise ValueError(f"{kept} objects but only {num_queries} queries per expression")
        scores = np.full((num_frames, num_queries), IGNORED_SCORE, dtype=np.float32)
        boxes = np.tile(np.float32([0.5, 0.5, 0.2, 0.2]), (num_frames, num_queries, 1))
        query_masks = np.zeros((num_frames, num_queries, height, width), dtype=bool)
        for query in range(kept):
            scores[:, query] = KEPT_SCORE
            scores[(exp + query) % num_frames, query] = PEAK_SCORE
            query_masks[:, query] = masks[:, (exp + query) % num_objects]
            boxes[:, query] = [_box(m, height, width) for m in query_masks[:, query]]
        proposals[str(exp)] = SimpleNamespace(scores=scores, boxes=boxes, masks=query_masks)
    return proposals


def _box(mask: np.ndarray, height: int, width: int) -> list[float]:
    """Normalised ``(cx, cy, w, h)`` of a non-empty ``[H, W]`` mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]


def compare_ways(reference, refiner, frame_dir: Path, proposals: dict, options):
    """Refine every expression both ways, alternating (load changes hit both).

    Returns:
        ``(per-expression timer, shared timer, masks identical, objects)``.
    """
    device = refiner.device
    per_expression, shared = ComponentTimer(device), ComponentTimer(device)
    frame_paths = sorted(frame_dir.glob("*.jpg"))
    identical, objects = True, 0
    with (
        per_expression.patch(reference, {"init_state": FRAMES, **PREDICTOR_COMPONENTS}),
        shared.patch(refiner.tracker.predictor, {"open_video": FRAMES, **PREDICTOR_COMPONENTS}),
    ):
        with shared.measure(OTHER):
            session = refiner.open_video(frame_paths, video_id="bench")
        for p in proposals.values():
            with per_expression.measure(OTHER):
                expected = reference_refine(
                    reference,
                    frame_dir,
                    scores=p.scores,
                    boxes=p.boxes,
                    masks=p.masks,
                    options=options,
                )
            with shared.measure(OTHER):
                result = refiner.refine(session, scores=p.scores, boxes=p.boxes, masks=p.masks)
            identical &= bool(
                np.array_equal(result.masks, expected.masks)
                and np.array_equal(result.columns, expected.columns)
                and np.array_equal(result.prompt_frames, expected.prompt_frames)
            )
            objects += result.num_objects
    return per_expression, shared, identical, objects


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.frame_size
    frames, masks = clips.synthetic_clip(
        args.frames, height, width, num_objects=max(3, max(args.objects))
    )
    proposals = make_proposals(masks, args.objects, args.queries)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        start = time.perf_counter()
        if args.model == "tiny":
            model, checkpoint = str(TINY_MODEL), TINY_CHECKPOINT
        else:
            model, checkpoint = args.model, real_size.write_sam2(Path(tmp), args.model)
        options = dataclasses.replace(
            load_config().stage2,
            model=model,
            checkpoint=str(checkpoint),
            prompt=PromptKind(args.prompt),
        )
        reference = build_reference_predictor(model, checkpoint, device=args.device)
        refiner = Refiner(build_tracker(options, device=args.device), options)
        build_seconds = time.perf_counter() - start

        # First-call costs (kernel selection, allocations) are paid before timing; the two
        # predictors are the same architecture, so warming one warms the kernels of both.
        with torch.inference_mode():
            size = reference.image_size
            reference.forward_image(torch.zeros(1, 3, size, size, device=reference.device))

        frame_dir = Path(tmp) / "frames"
        frame_dir.mkdir()
        for index, frame in enumerate(frames):
            frame.save(frame_dir / f"{index:05d}.jpg", quality=95)
        logger.info(
            "stage 2: SAM 2.1 %s at %d px, random weights (written and built twice in %s); "
            "%d frames of %dx%d; %d expressions keeping %s queries of %d; %s prompts; "
            "device %s, %d torch threads, 1-minute load average %.2f",
            args.model,
            refiner.tracker.predictor.image_size,
            format_seconds(build_seconds),
            args.frames,
            width,
            height,
            len(args.objects),
            "+".join(map(str, args.objects)),
            args.queries,
            args.prompt,
            args.device,
            torch.get_num_threads(),
            os.getloadavg()[0],
        )
        per_expression, shared, identical, objects = compare_ways(
            reference, refiner, frame_dir, proposals, options
        )

    rows = comparison_rows(COMPONENT_LABELS, per_expression, shared)
    logger.info("\n%s\n", format_table(COMPARISON_HEADERS, rows))
    ratio = per_expression.total() / shared.total()
    logger.info(
        "stage 2 ratio: %.2fx (per-expression %s / shared %s); %d objects; image encoder runs: "
        "%d per-expression, %d shared; masks identical: %s",
        ratio,
        format_seconds(per_expression.total()),
        format_seconds(shared.total()),
        objects,
        per_expression.calls.get(ENCODER, 0),
        shared.calls.get(ENCODER, 0),
        "yes" if identical else "NO",
    )
    if not identical:
        raise SystemExit("stage 2: the two ways disagree")


if __name__ == "__main__":
    main()
