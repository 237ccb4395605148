"""Try ReferDINO-Plus on your own video: a clip and sentences in, coloured masks out.

    python run_pipeline.py demo --video PATH --text "the dog running to the left" [--text ...]
                                [--out DIR] [--frame-step N] [--max-frames N] [--cpu | --gid N]
                                [key=value ...]

``PATH`` is a video file (mp4, mov, webm, ... anything PyAV decodes) or a folder of frames
(``.jpg``/``.jpeg``/``.png``, in natural name order: ``2.jpg`` before ``10.jpg``). The three stages
run in this process on one device, configured by ``configs/pipeline.yaml`` and the same
``key=value`` overrides as the pipeline (``stage1.*``/``stage2.*`` choose the models,
``stage3.*`` the fusion rule, ``visualize.*``/``demo.*`` the drawing). A clip of any length
runs: stage 1 takes it in windows of ``demo.window_frames`` frames (``stage1.window.frames=null``:
one pass), and frames are read when needed (a video is decoded once into a temporary folder).
``DIR`` receives:

- ``overlay.mp4``: the frames with each sentence's masks in its colour (H.264, yuv420p);
- ``masks/<sentence index>/<frame>.png``: the fused masks, mode L, 0/255, frame size; a video's
  frames are named by their index in the video (``00000``, ``00002``, ... with
  ``--frame-step 2``), a folder's keep their file names;
- ``summary.json``: the sentences, their kept queries and fusion decisions.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from referdino_plus.arguments import parse_with_overrides
from referdino_plus.config import PipelineConfig, VisualizeOptions
from referdino_plus.runtime import (
    add_single_device_arguments,
    setup_logging,
)
from referdino_plus.segmenter import (
    EXIT_USAGE,
    DemoError,
    ProgressCallback,
    Segmentation,
    Segmenter,
    StageProgress,
    TqdmProgress,
    check_models,
    demo_config_and_device,
)
from rvos.archive import encode_png
from rvos.drawing import caption_band, color_of, hex_color, overlay_masks, pad_to_even
from rvos.intermediates import Stage3Video
from rvos.interrupts import exit_status, signal_name, stop_on_signals
from rvos.io import atomic_output, make_temp_dir
from rvos.video import Clip, VideoError, h264_writer, load_clip, source_name
from rvos.workers import bind_device

logger = logging.getLogger(__name__)

DEFAULT_OUT_ROOT = Path("work") / "demo"
# The step write_outputs reports progress for.
WRITING = "writing outputs"
OUT_OF_MEMORY_HINT = (
    "use a smaller demo.window_frames or stage1.short_side, stage2.offload_video_to_cpu=true, "
    "fewer frames (--frame-step N, --max-frames N), or --cpu"
)


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--video", required=True, type=Path, help="a video file or a folder of frames"
    )
    parser.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="SENTENCE",
        help="a referring sentence; repeat for several (each gets a colour)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output folder (default: {DEFAULT_OUT_ROOT}/<video name>); its overlay.mp4, "
        "masks/ and summary.json are replaced",
    )
    parser.add_argument(
        "--frame-step", type=int, default=1, metavar="N", help="keep every N-th frame (default 1)"
    )
    parser.add_argument(
        "--max-frames", type=int, metavar="N", help="stop after N kept frames (default: all)"
    )
    add_single_device_arguments(parser)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags and ``key=value`` overrides in any order.

    Raises:
        DemoError: a positional argument that is not ``key=value``, or a non-positive
            ``--frame-step``/``--max-frames``.
    """
    args = parse_with_overrides(build_parser(), argv, stray=stray_argument)
    if args.frame_step < 1:
        raise DemoError(f"--frame-step {args.frame_step}: expected N >= 1", EXIT_USAGE)
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames {args.max_frames}: expected N >= 1", EXIT_USAGE)
    return args


def stray_argument(word: str) -> DemoError:
    """The error of a positional word that is not ``key=value``."""
    return DemoError(
        f"unexpected argument {word!r}: overrides are key=value, sentences go after --text",
        EXIT_USAGE,
    )


def check_sentences(texts: Sequence[str]) -> list[str]:
    """The ``--text`` sentences as written (as MeViS expressions are read: ReferDINO tokenizes the
    raw text).

    Raises:
        DemoError: a sentence that is empty or only whitespace (numbered from 1).
    """
    sentences = list(texts)
    for number, sentence in enumerate(sentences, start=1):
        if not sentence.strip():
            raise DemoError(f"--text #{number} is empty: give a sentence", EXIT_USAGE)
    return sentences


# ----------------------------------------------------------------------------- outputs


def write_outputs(
    out_dir: Path,
    clip: Clip,
    sentences: Sequence[str],
    fused: Stage3Video,
    *,
    visual: VisualizeOptions,
    crf: int,
    progress: ProgressCallback | None = None,
) -> None:
    """``overlay.mp4`` and ``masks/<index>/<frame>.png`` in one pass over the frames.

    Each frame gets its sentences' masks blended in their colours and outlined, above a band with
    the sentences; the picture is padded to even sides. The masks are written to a hidden folder
    first and replace ``masks/`` at the end, so an earlier run's PNGs never mix with these.
    ``progress`` is told after each frame (step :data:`WRITING`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = [color_of(i) for i in range(len(sentences))]
    band = caption_band(sentences, colors, clip.size[1], max_lines=visual.caption_max_lines)
    masks = [fused.expressions[str(i)].masks for i in range(len(sentences))]
    height, width = clip.size[0] + band.shape[0], clip.size[1]
    staging = make_temp_dir(out_dir, ".masks.")
    try:
        folders = [staging / str(i) for i in range(len(sentences))]
        for folder in folders:
            folder.mkdir()
        video_size = (height + height % 2, width + width % 2)
        with h264_writer(out_dir / "overlay.mp4", size=video_size, fps=clip.fps, crf=crf) as write:
            for t in range(len(clip.frames)):
                frame_masks = [m.decode([t])[0] for m in masks]  # S x [H, W] bool
                for folder, mask in zip(folders, frame_masks, strict=True):
                    (folder / f"{clip.frame_names[t]}.png").write_bytes(encode_png(mask))
                drawn = overlay_masks(
                    np.asarray(clip.frames[t]),
                    frame_masks,
                    colors,
                    alpha=visual.alpha,
                    contour_width=visual.contour_width,
                )
                write(pad_to_even(np.concatenate([drawn, band])))
                if progress is not None:
                    progress(StageProgress(WRITING, t + 1, len(clip.frames), "frame"))
        shutil.rmtree(out_dir / "masks", ignore_errors=True)
        staging.rename(out_dir / "masks")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def summarize(
    clip: Clip,
    sentences: Sequence[str],
    records: Segmentation,
    cfg: PipelineConfig,
    device: str,
    frame_step: int,
) -> dict[str, Any]:
    """The content of ``summary.json``: input, models, and per sentence its queries and fusion."""
    stage1, stage2, stage3 = records.stage1, records.stage2, records.stage3
    entries = []
    for index, text in enumerate(sentences):
        exp_id = str(index)
        proposals = stage1.expressions[exp_id]
        refinement = stage2.expressions[exp_id]
        fusion = stage3.expressions[exp_id]
        kept = np.asarray(refinement.kept_columns, dtype=np.int64)
        if kept.size == 0:
            output = f"empty: no query above stage2.score_threshold={cfg.stage2.score_threshold}"
        elif fusion.multi_object:
            output = "SAM 2 ∪ stage 1 (multi-object)"
        else:
            output = "SAM 2"
        entries.append(
            {
                "index": index,
                "text": text,
                "color": hex_color(color_of(index)),
                "masks": f"masks/{index}",
                "kept_queries": [int(q) for q in proposals.query_ids[kept]],
                "kept_query_mean_scores": [
                    round(float(proposals.scores[:, q].mean()), 4) for q in kept
                ],
                "prompt_frames": [clip.frame_names[int(f)] for f in refinement.prompt_frames],
                "fused_output": output,
                "multi_object": bool(fusion.multi_object),
                "frames_sam2_smaller": int(fusion.frames_sam2_smaller),
                "frames_both_nonempty": int(fusion.frames_both_nonempty),
                "frames_with_mask": int(fusion.masks.any_foreground().sum()),
            }
        )
    return {
        "input": str(clip.source),
        "frames": len(clip.frames),
        "frame_step": frame_step,
        "frame_size": list(clip.size),
        "fps": float(clip.fps),
        "device": device,
        "stage1": {"model": cfg.stage1.model, "checkpoint": cfg.stage1.checkpoint},
        "stage2": {"model": cfg.stage2.model, "checkpoint": cfg.stage2.checkpoint},
        "sentences": entries,
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write :func:`summarize`'s dict as JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return path


# ----------------------------------------------------------------------------- main


def run_demo(args: argparse.Namespace) -> Path:
    """Everything after argument parsing; returns the output folder.

    Raises:
        DemoError: anything the user can fix, with a one-line message.
    """
    sentences = check_sentences(args.text)
    if not args.video.exists():
        raise DemoError(f"--video {args.video}: no such file or folder")
    out_dir = args.out or DEFAULT_OUT_ROOT / source_name(args.video)
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"--out {out_dir}: exists and is not a folder")
    cfg, device = demo_config_and_device(args.overrides, args.gid, args.cpu)
    check_models(cfg)
    bind_device(device)
    try:
        clip = load_clip(
            args.video,
            frame_step=args.frame_step,
            max_frames=args.max_frames,
            folder_fps=cfg.demo.fps,
        )
    except VideoError as err:
        raise DemoError(f"--video {err}") from None
    height, width = clip.size
    logger.info(
        "%d frame(s) of %dx%d from %s; %d sentence(s) on %s",
        len(clip.frames),
        width,
        height,
        clip.source,
        len(sentences),
        device,
    )
    with TqdmProgress() as bars:
        segmenter = Segmenter(device, keep_models=False, out_of_memory_hint=OUT_OF_MEMORY_HINT)
        records = segmenter.segment(clip, sentences, cfg, progress=bars)
    summary = summarize(clip, sentences, records, cfg, device, args.frame_step)
    for entry in summary["sentences"]:
        if not entry["kept_queries"]:
            logger.warning(
                "sentence %d (%r): no query scored above stage2.score_threshold; its masks "
                "are empty",
                entry["index"],
                entry["text"],
            )
    with TqdmProgress() as bars:
        write_outputs(
            out_dir,
            clip,
            sentences,
            records.stage3,
            visual=cfg.visualize,
            crf=cfg.demo.crf,
            progress=bars,
        )
    clip.close()  # a video's decoded frames (also deleted if anything above fails)
    write_summary(out_dir / "summary.json", summary)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``run_pipeline.py demo ...``; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(quiet="-q" in argv or "--quiet" in argv)
    try:
        args = parse_args(argv)
        with stop_on_signals():  # SIGTERM as Ctrl-C: the outputs being written are dropped whole
            out_dir = run_demo(args)
    except DemoError as err:
        logger.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt as stop:
        logger.error("interrupted (%s)", signal_name(stop))
        return exit_status(stop)
    logger.info("wrote %s: overlay.mp4, masks/, summary.json", out_dir)
    return 0
