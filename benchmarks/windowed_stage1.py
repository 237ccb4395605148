"""How stage 1 in windows differs from one pass, on the fixture clip and the tiny model.

Runs the stage-1 runner on ``tests/fixtures/referdino_tiny`` (40 frames of 960x540 at the fixture's
short side, six sentences) once in one pass and once per window layout, and compares each
windowed record with the one-pass record, query by query (a stitched query is named by its
query in the first window, whose frames it shares with one pass):

- mask IoU of the same query, over the (frame, query) pairs where either mask is non-empty;
- the queries that follow their one-pass query: in each later window's owned frames, the one-pass
  query whose masks overlap the stitched query's most is the same query;
- mean absolute differences of scores and boxes;
- the stage-1 answer's IoU, and whether stage 2 would keep other queries
  (``stage2.score_threshold``) or prompt them on other frames.

    python benchmarks/windowed_stage1.py                      # windows 16/4, 24/8, 12/4
    python benchmarks/windowed_stage1.py --windows 16/4 --sentences 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from referdino_plus.config import load_config  # noqa: E402
from rvos.frames import FrameFiles  # noqa: E402
from stage1_referdino.runner import build_stage1_model, stage1_record  # noqa: E402
from stage1_referdino.windows import clip_windows  # noqa: E402
from stage2_sam2_refine.prompts import prompt_frames, select_queries  # noqa: E402
from timing import format_table  # noqa: E402

logger = logging.getLogger("windowed_stage1")

TINY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "referdino_tiny"
# The fixture's two expressions, then four more (the clip: a child on a bed, a bedroom).
MORE_SENTENCES = [
    "the child sitting on the bed",
    "the white cup on the table.",
    "the pillow on the left",
    "a person walking into the room",
]
HEADERS = [
    "windows",
    "mask IoU, same query",
    "queries following one pass",
    "|Δ score|",
    "|Δ box|",
    "answer IoU",
    "stage-2 queries changed",
    "prompt frames changed",
    "seconds",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--windows",
        default="16/4,24/8,12/4",
        help="window layouts FRAMES/SHARED (frames per window, frames neighbours share), "
        "comma-separated (default: 16/4,24/8,12/4)",
    )
    parser.add_argument("--sentences", type=int, default=6, help="sentences, at most 6")
    return parser.parse_args(argv)


def iou(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """``(intersection, union)`` pixel counts of two boolean arrays."""
    return int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())


def compare(one_pass, windowed, windows, score_threshold: float) -> dict[str, float]:
    """The measures of the module docstring, summed over the expressions."""
    inter = union = followed = following_total = 0
    answer_inter = answer_union = 0
    score_diff, box_diff, kept_changed, prompts_changed = [], [], 0, 0
    for exp_id, base in one_pass.expressions.items():
        other = windowed.expressions[exp_id]
        base_masks, other_masks = base.masks.decode(), other.masks.decode()  # [T, Q, H, W]
        num_queries = base_masks.shape[1]
        for q in range(num_queries):
            i, u = iou(base_masks[:, q], other_masks[:, q])
            inter, union = inter + i, union + u
        for window in windows[1:]:
            owned = slice(window.own_start, window.own_stop)
            for q in range(num_queries):
                overlaps = [
                    iou(base_masks[owned, p], other_masks[owned, q])[0] for p in range(num_queries)
                ]
                followed += int(np.argmax(overlaps) == q and max(overlaps) > 0)
                following_total += int(max(overlaps) > 0)
        i, u = iou(base.answer.decode(), other.answer.decode())
        answer_inter, answer_union = answer_inter + i, answer_union + u
        score_diff.append(np.abs(base.scores - other.scores).mean())
        box_diff.append(np.abs(base.boxes - other.boxes).mean())
        kept_base = select_queries(base.scores, score_threshold)
        kept_other = select_queries(other.scores, score_threshold)
        if not np.array_equal(kept_base, kept_other):
            kept_changed += 1
        elif not np.array_equal(
            prompt_frames(base.scores, kept_base), prompt_frames(other.scores, kept_other)
        ):
            prompts_changed += 1
    return {
        "mask_iou": inter / union if union else 1.0,
        "followed": followed,
        "following_total": following_total,
        "score": float(np.mean(score_diff)),
        "box": float(np.mean(box_diff)),
        "answer_iou": answer_inter / answer_union if answer_union else 1.0,
        "kept_changed": kept_changed,
        "prompts_changed": prompts_changed,
        "expressions": len(one_pass.expressions),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = json.loads((TINY / "fixture.json").read_text(encoding="utf-8"))
    sentences = [*meta["expressions"].values(), *MORE_SENTENCES][: args.sentences]
    expressions = {str(i): text for i, text in enumerate(sentences)}
    cfg = load_config(
        [
            f"stage1.model={TINY / 'model.yaml'}",
            f"stage1.checkpoint={TINY / 'referdino_checkpoint.pth'}",
            f"stage1.short_side={meta['short_side']}",
        ]
    )
    names = meta["frame_names"]
    frames = FrameFiles(TINY / "frames" / f"{name}.jpg" for name in names)
    model = build_stage1_model(cfg.stage1, "cpu")

    def run(options):
        start = time.perf_counter()
        record = stage1_record(
            model, frames, expressions, options, video_id="fixture", frame_names=names
        )
        return record, time.perf_counter() - start

    one_pass, seconds = run(cfg.stage1)
    logger.info("one pass: %.1f s", seconds)
    rows = []
    for layout in args.windows.split(","):
        size, overlap = (int(v) for v in layout.split("/"))
        window = dataclasses.replace(cfg.stage1.window, frames=size, overlap=overlap / size)
        windowed, seconds = run(dataclasses.replace(cfg.stage1, window=window))
        windows = clip_windows(len(frames), window)
        m = compare(one_pass, windowed, windows, cfg.stage2.score_threshold)
        rows.append(
            [
                f"{size} frames, overlap {overlap} ({len(windows)} windows)",
                f"{m['mask_iou']:.3f}",
                f"{m['followed']}/{m['following_total']}",
                f"{m['score']:.4f}",
                f"{m['box']:.4f}",
                f"{m['answer_iou']:.3f}",
                f"{m['kept_changed']}/{m['expressions']}",
                f"{m['prompts_changed']}/{m['expressions']}",
                f"{seconds:.1f}",
            ]
        )
        logger.info("%s", rows[-1])
    print(
        f"{len(frames)} frames, {len(expressions)} sentences, short side {meta['short_side']}; "
        f"one pass: the reference"
    )
    print(format_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
