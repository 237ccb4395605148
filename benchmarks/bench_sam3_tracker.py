"""Stage-2 trackers: SAM 3's tracker against SAM 2.1-L, seconds per object-frame, both ways.

Each tracker refines the same expressions of a generated clip (one kept query each, mask prompts)
two ways:

- per expression, as each tracker is documented: SAM 2.1-L through ReferDINO-Plus's own use of
  SAM 2's predictor (``init_state`` per expression, the image encoder per frame and direction);
  SAM 3 through transformers' video API with a fresh ``init_video_session`` per expression;
- with shared features, as stage 2 runs them: the video decoded once and each frame's image
  features computed once for all expressions and both directions (``stage2.tracker=sam2``:
  :func:`stage2_sam2_refine.tracker.build_tracker` behind
  :class:`stage2_sam2_refine.refine.Refiner`; ``stage2.tracker=sam3``: the same, through
  :func:`stage2_sam2_refine.sam3.build`).

An object-frame is one object's mask on one frame (objects x frames, per expression). Both
models are real size with generated random weights (``real_size.py``): SAM 2.1-L at 1024 px,
SAM 3's tracker at the released configuration (1008 px, the 32-layer ViT-L of SAM 3's backbone).
Masks of the two ways are compared for each tracker.

    python benchmarks/bench_sam3_tracker.py                  # 2 frames, 2 expressions
    python benchmarks/bench_sam3_tracker.py --device cuda --frames 8 --expressions 6
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test oracles

from oracles.sam2_reference import build_reference_predictor  # noqa: E402

import bench_stage2_feature_reuse as sam2_bench  # noqa: E402
import clips  # noqa: E402
import real_size  # noqa: E402
from referdino_plus.config import load_config  # noqa: E402
from rvos.masks import RunLengthMasks  # noqa: E402
from stage2_sam2_refine.prompts import prompt_frames, select_queries  # noqa: E402
from stage2_sam2_refine.refine import Refiner  # noqa: E402
from stage2_sam2_refine.sam3 import load_rgb_frames  # noqa: E402
from stage2_sam2_refine.tracker import ObjectPrompt, build_tracker  # noqa: E402
from timing import (  # noqa: E402
    COMPARISON_HEADERS,
    ComponentTimer,
    comparison_rows,
    format_seconds,
    format_table,
)

logger = logging.getLogger("bench_sam3")

FRAMES, ENCODER, TRACKING, POSTPROCESS, OTHER = (
    sam2_bench.FRAMES,
    sam2_bench.ENCODER,
    sam2_bench.TRACKING,
    sam2_bench.POSTPROCESS,
    sam2_bench.OTHER,
)
SAM3_COMPONENT_LABELS = [
    (FRAMES, "frames: decode, resize, normalise"),
    (ENCODER, "vision backbone (ViT-L, FPN)"),
    (TRACKING, "per-object tracking (memory attention, mask decoder, memory encoder)"),
    (POSTPROCESS, "mask post-processing (upsample to frame size, threshold) and encoding"),
    (OTHER, "other (prompts, bookkeeping)"),
]
SAM3_MODEL_COMPONENTS = {"get_image_features": ENCODER, "forward": TRACKING}
SAM3_PROCESSOR_COMPONENTS = {"post_process_masks": POSTPROCESS}
SUMMARY_HEADERS = (
    "tracker",
    "way",
    "total",
    "object-frames",
    "per object-frame",
    "backbone runs",
    "ratio",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2, help="frames of the clip")
    parser.add_argument("--frame-size", type=clips.parse_size, default=(720, 1280), help="WxH")
    parser.add_argument(
        "--expressions", type=int, default=2, help="expressions, one kept query each"
    )
    parser.add_argument("--queries", type=int, default=15, help="stage-1 queries per expression")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work-dir", type=Path, default=None, help="random weights go here")
    return parser.parse_args(argv)


def expression_prompts(proposals, threshold: float) -> list[ObjectPrompt]:
    """Stage 2's prompts for one expression: each kept query's mask on its best frame."""
    queries = select_queries(proposals.scores, threshold)
    frames = prompt_frames(proposals.scores, queries)
    return [
        ObjectPrompt(obj_id=k, frame_idx=int(f), mask=proposals.masks[int(f), int(q)])
        for k, (q, f) in enumerate(zip(queries, frames, strict=True))
    ]


def sam3_per_expression(tracker, frames, prompts, timer: ComponentTimer) -> np.ndarray:
    """``[T, K, H, W] bool``: transformers' documented video API on a fresh session (the frames
    decoded again, as SAM 2's ``init_state`` does)."""
    model, processor = tracker.model, tracker.processor
    with timer.measure(FRAMES):
        images = load_rgb_frames(frames, video_id="bench")
        session = processor.init_video_session(video=images, inference_device=tracker.device)
    height, width = int(session.video_height), int(session.video_width)
    out = np.zeros((len(frames), len(prompts), height, width), dtype=bool)
    for prompt in prompts:
        processor.add_inputs_to_inference_session(
            inference_session=session,
            frame_idx=prompt.frame_idx,
            obj_ids=prompt.obj_id,
            input_masks=prompt.mask,
        )
        model(inference_session=session, frame_idx=prompt.frame_idx)
    for reverse in (False, True):
        for output in model.propagate_in_video_iterator(session, reverse=reverse):
            masks = processor.post_process_masks(
                [output.pred_masks], original_sizes=[[height, width]]
            )[0]
            out[output.frame_idx] = masks[:, 0].cpu().numpy()
    return out


def sam3_shared(session, prompts) -> np.ndarray:
    """``[T, K, H, W] bool``: stage 2's SAM 3 tracker on a video opened once."""
    height, width = session.size
    out = np.zeros((session.num_frames, len(prompts), height, width), dtype=bool)
    for frame in session.track(prompts):
        out[frame.frame_idx] = frame.masks
    return out


def compare_sam3(tracker, frames: list, expressions: list[list[ObjectPrompt]]):
    """Track every expression both ways, alternating, the shared way first (it pays the
    first-call costs).

    Returns:
        ``(per-expression timer, shared timer, masks identical)``.
    """
    device = tracker.device
    per_expression, shared = ComponentTimer(device), ComponentTimer(device)
    identical = True

    def patched(timer: ComponentTimer):
        return _Patches(
            timer,
            (tracker.model, SAM3_MODEL_COMPONENTS),
            (tracker.processor, SAM3_PROCESSOR_COMPONENTS),
        )

    with patched(shared), shared.measure(FRAMES):
        session = tracker.open_video(frames, video_id="bench")
    for prompts in expressions:
        with patched(shared), shared.measure(OTHER):
            ours = sam3_shared(session, prompts)
            with shared.measure(POSTPROCESS):
                RunLengthMasks.encode(ours)
        with patched(per_expression), per_expression.measure(OTHER):
            theirs = sam3_per_expression(tracker, frames, prompts, per_expression)
            with per_expression.measure(POSTPROCESS):
                RunLengthMasks.encode(theirs)
        identical &= bool(np.array_equal(ours, theirs))
    return per_expression, shared, identical


class _Patches:
    """Several :meth:`ComponentTimer.patch` at once."""

    def __init__(self, timer: ComponentTimer, *targets) -> None:
        self._contexts = [timer.patch(obj, components) for obj, components in targets]

    def __enter__(self) -> None:
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc) -> None:
        for context in reversed(self._contexts):
            context.__exit__(*exc)


def summary_rows(name: str, per_expression, shared, object_frames: int) -> list[list[str]]:
    rows = []
    for way, timer in (("per expression", per_expression), ("shared features", shared)):
        total = timer.total()
        rows.append(
            [
                name,
                way,
                format_seconds(total),
                str(object_frames),
                format_seconds(total / object_frames),
                str(timer.calls.get(ENCODER, 0)),
                f"{per_expression.total() / total:.2f}x",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.frame_size
    frames, masks = clips.synthetic_clip(
        args.frames, height, width, num_objects=max(3, args.expressions)
    )
    proposals = sam2_bench.make_proposals(masks, [1] * args.expressions, args.queries)
    stage2 = load_config().stage2
    object_frames = args.expressions * args.frames
    logger.info(
        "%d frames of %dx%d; %d expressions keeping one query each (%d object-frames); mask "
        "prompts; device %s, %d torch threads, 1-minute load average %.2f",
        args.frames,
        width,
        height,
        args.expressions,
        object_frames,
        args.device,
        torch.get_num_threads(),
        os.getloadavg()[0],
    )
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        # SAM 2.1-L, as bench_stage2_feature_reuse.py times it.
        start = time.perf_counter()
        checkpoint = real_size.write_sam2(Path(tmp), "sam2.1_hiera_l")
        options = dataclasses.replace(stage2, model="sam2.1_hiera_l", checkpoint=str(checkpoint))
        reference = build_reference_predictor("sam2.1_hiera_l", checkpoint, device=args.device)
        refiner = Refiner(build_tracker(options, device=args.device), options)
        with torch.inference_mode():
            size = reference.image_size
            reference.forward_image(torch.zeros(1, 3, size, size, device=reference.device))
        frame_dir = Path(tmp) / "frames"
        frame_dir.mkdir()
        for index, frame in enumerate(frames):
            frame.save(frame_dir / f"{index:05d}.jpg", quality=95)
        frames = [path for path in sorted(frame_dir.glob("*.jpg"))]  # both trackers read JPEGs
        logger.info(
            "SAM 2.1-L written and built in %s", format_seconds(time.perf_counter() - start)
        )
        sam2_per_expression, sam2_shared, sam2_identical, _ = sam2_bench.compare_ways(
            reference, refiner, frame_dir, proposals, options
        )
        logger.info("SAM 2.1-L: load average now %.2f", os.getloadavg()[0])
        del reference, refiner

        # SAM 3's tracker at the released configuration.
        start = time.perf_counter()
        folder = real_size.write_sam3(Path(tmp) / "sam3")
        options = dataclasses.replace(
            load_config(["stage2.tracker=sam3"]).stage2, checkpoint=str(folder)
        )
        tracker = build_tracker(options, device=args.device)
        logger.info("SAM 3 written and built in %s", format_seconds(time.perf_counter() - start))
        expressions = [expression_prompts(p, stage2.score_threshold) for p in proposals.values()]
        sam3_per_expression_timer, sam3_shared_timer, sam3_identical = compare_sam3(
            tracker, frames, expressions
        )
        logger.info("SAM 3: load average now %.2f", os.getloadavg()[0])

    rows = summary_rows(
        "SAM 2.1-L (1024 px)", sam2_per_expression, sam2_shared, object_frames
    ) + summary_rows(
        "SAM 3 tracker (1008 px)", sam3_per_expression_timer, sam3_shared_timer, object_frames
    )
    logger.info("\n%s\n", format_table(SUMMARY_HEADERS, rows))
    logger.info(
        "SAM 2.1-L components:\n%s\n",
        format_table(
            COMPARISON_HEADERS,
            comparison_rows(sam2_bench.COMPONENT_LABELS, sam2_per_expression, sam2_shared),
        ),
    )
    logger.info(
        "SAM 3 components:\n%s\n",
        format_table(
            COMPARISON_HEADERS,
            comparison_rows(SAM3_COMPONENT_LABELS, sam3_per_expression_timer, sam3_shared_timer),
        ),
    )
    shared_ratio = sam3_shared_timer.total() / sam2_shared.total()
    logger.info(
        "SAM 3 / SAM 2.1-L per object-frame, shared features: %.2fx; masks identical between "
        "the ways: SAM 2.1-L %s, SAM 3 %s",
        shared_ratio,
        "yes" if sam2_identical else "NO",
        "yes" if sam3_identical else "NO",
    )
    if not (sam2_identical and sam3_identical):
        raise SystemExit("the two ways disagree")


if __name__ == "__main__":
    main()
