"""The GPU check's sizes, bars, measurements and comparisons; the tests are ``tests/gpu/``.

``make gpu-check`` runs the tests marked ``gpu`` on a machine with CUDA GPUs; they download
nothing. On a generated 720p clip with real-size models and random weights (ReferDINO
``mevis_swinb``, SAM 2.1 Hiera-L: see ``real_size.py``) they measure and compare:

1. speed: per stage, frames/s and expression-frames/s, peak GPU memory, and the share of each
   component (stage 1: backbone / text encoder, transformer and heads / mask post-processing;
   stage 2: frames / image encoder / per-object tracking / mask post-processing); and stage 1's
   mask post-processing of one expression (80 frames of 1280x720, 15 queries) on the device,
   against the model's time per frame;
2. float32 agreement of the GPU with the CPU on a short clip (stage 1: max abs diff of logits,
   boxes and mask logits; stage 2: mask IoU);
3. float16 and bfloat16 autocast against float32 (mask IoU of both stages, fusion decisions);
4. the out-of-memory fallbacks of both stages, triggered by a memory cap
   (``torch.cuda.set_per_process_memory_fraction``) between the peaks of the normal and the
   fallback way, giving the same masks as without the cap;
5. with two or more GPUs, ``run_pipeline.py --gids`` over all of them against ``--gids 0``;
6. the demo with ``--gid`` on the last GPU.

The figures are printed at the end of the run (:func:`render`). ``GPU_CHECK_ARGS`` changes the
sizes (:func:`build_parser`); with ``--cpu`` the same tests run on the CPU with the tiny fixture
models, and those that need CUDA skip (``tests/test_benchmarks.py`` runs them so).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import clips

logger = logging.getLogger("gpu_check")

# -- the check's sizes and bars (the defaults of GPU_CHECK_ARGS) -----------------------------------

NUM_FRAMES = 60  # frames of the generated clip
NUM_EXPRESSIONS = 8  # its expressions
FRAME_SIZE = (720, 1280)  # (H, W): MeViS videos are mostly 1280x720
SHORT_FRAMES = 4  # frames of the GPU-vs-CPU clip (the CPU runs the real models on it)
AUTOCAST_FRAMES = 30  # frames of the autocast comparison (three runs of stages 1-3)
MULTI_GPU_FRAMES = 8  # frames of each video of the --gids comparison (one video per GPU)
DEMO_FRAMES = 12  # frames the demo runs on
# Stage-1 queries kept in the records: bounds SAM 2's objects per expression (random weights
# give every one of the 15 queries a score near 1, and all 15 would be tracked).
TOP_K = 2
# Stage 1's post-processing comparison: one expression of a MeViS-size video.
POST_FRAMES, POST_QUERIES = 80, 15
# float32 GPU vs CPU, stage 1: max |GPU - CPU| of each output relative to its largest |CPU|
# value (random weights give logits of tens). The port's parity fixtures hold 1e-3 absolute on
# logits of order 1 between two CPU implementations.
STAGE1_GPU_CPU_RELATIVE = 1e-3
# float32 GPU vs CPU, stage 2: mean IoU of SAM 2's masks over object-frames (the fixtures' bar
# between our stage 2 and the original code on the CPU is 0.99 per expression).
STAGE2_GPU_CPU_MIN_IOU = 0.99
# float16 / bfloat16 autocast vs float32: mean IoU over expression-frames of the stage-1 answer
# and the SAM 2 union (lower precision moves mask borders by a pixel or so).
AUTOCAST_MIN_IOU = 0.9
# Memory-cap fallbacks: the normal and the fallback way's peaks must differ by at least this
# much for a cap between them to be meaningful.
MIN_CAP_GAP_BYTES = 256 * 2**20
# The masks of a fallback (and of the --gids runs) equal the normal run's: per-mask IoU bar.
SAME_MASKS_MIN_IOU = 0.999


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="GPU_CHECK_ARGS",
        description="The GPU check's sizes and device: the environment variable GPU_CHECK_ARGS.",
    )
    parser.add_argument("--frames", type=positive_int, default=NUM_FRAMES, help="clip frames")
    parser.add_argument("--expressions", type=positive_int, default=NUM_EXPRESSIONS)
    parser.add_argument("--frame-size", type=clips.parse_size, default=FRAME_SIZE, help="WxH")
    parser.add_argument("--short-frames", type=positive_int, default=SHORT_FRAMES)
    parser.add_argument("--autocast-frames", type=positive_int, default=AUTOCAST_FRAMES)
    parser.add_argument(
        "--sam2-model",
        default="sam2.1_hiera_l",
        choices=["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"],
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep the generated models, clip and runs here (default: temp)",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="run on the CPU with the tiny fixture models (the tests' own code; CUDA-only "
        "tests skip)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.short_frames > args.frames or args.autocast_frames > args.frames:
        build_parser().error("--short-frames and --autocast-frames must not exceed --frames")
    if args.expressions > len(clips.SENTENCES) * 4:
        build_parser().error(f"--expressions: at most {len(clips.SENTENCES) * 4}")
    return args


def args_from_environment(environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """:func:`parse_args` of ``GPU_CHECK_ARGS`` (shell words; unset: the defaults above)."""
    return parse_args(shlex.split(environ.get("GPU_CHECK_ARGS", "")))


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check (no PyTorch, no CUDA GPU), or ``None``."""
    try:
        import torch
    except ImportError:
        return "no PyTorch in this Python"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"no CUDA GPU visible (torch {torch.__version__}, {build})"
    return None


def machine_line() -> str:
    """The GPUs, PyTorch, CUDA and Python of this machine, one line."""
    import platform

    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (
        f"{len(names)} GPU(s): {', '.join(names) or '-'}; torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, Python {platform.python_version()}"
    )


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Measurements:
    """What the GPU check measured, printed at the end of the run (see :func:`render`).

    Attributes:
        machine: the GPUs and versions, one line.
        clip: the generated clip and the time its models took to write, one line.
        speed, components, postprocess: rows of the speed tables.
        comparisons: ``[comparison, "ok" | "FAILED", measured values]`` in the order they ran.
    """

    machine: str = ""
    clip: str = ""
    speed: list[list[str]] = field(default_factory=list)
    components: list[list[str]] = field(default_factory=list)
    postprocess: list[list[str]] = field(default_factory=list)
    comparisons: list[list[str]] = field(default_factory=list)

    def compared(self, what: str, passed: bool, detail: str) -> None:
        self.comparisons.append([what, "ok" if passed else "FAILED", detail])
        logger.info("  %s: %s (%s)", what, "ok" if passed else "FAILED", detail)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (see ``timing.format_table``)."""
    from benchmarks.timing import format_table as table

    return table(headers, rows)


def render(measurements: Measurements) -> str:
    """The tables printed at the end."""
    parts = [line for line in (measurements.machine, measurements.clip) if line]
    if measurements.speed:
        headers = ["stage", "time", "frames/s", "expression-frames/s", "peak GPU memory"]
        parts.append("speed\n\n" + format_table(headers, measurements.speed))
    if measurements.components:
        headers = ["stage", "component", "time", "share"]
        parts.append(
            "time per component (a pass with a device synchronisation at every boundary)\n\n"
            + format_table(headers, measurements.components)
        )
    if measurements.postprocess:
        headers = ["stage-1 mask post-processing", "time", "per frame", "share of the frame"]
        parts.append(format_table(headers, measurements.postprocess))
    if measurements.comparisons:
        headers = ["comparison", "result", "measured"]
        parts.append("comparisons\n\n" + format_table(headers, measurements.comparisons))
    return "\n\n".join(parts)


# -- comparisons (pure: unit-tested on the CPU) ----------------------------------------------------


def relative_max_abs_diff(value, reference) -> tuple[float, float]:
    """``(max |value - reference|, that divided by max(1, max |reference|))``."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"shapes differ: {value.shape} vs {reference.shape}")
    if value.size == 0:
        return 0.0, 0.0
    diff = float(np.abs(value - reference).max())
    return diff, diff / max(1.0, float(np.abs(reference).max()))


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each ``[H, W]`` mask of two ``[..., H, W] bool`` stacks; both empty: 1."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def compare_outputs(
    value: Mapping[str, Any], reference: Mapping[str, Any], relative_tolerance: float
) -> tuple[bool, str]:
    """Stage-1 outputs (``pred_logits``, ``pred_boxes``, ``pred_masks``) against a reference.

    Returns:
        ``(every output within relative_tolerance, "key max-abs-diff (relative), ...")``.
    """
    passed, parts = True, []
    for key in reference:
        diff, relative = relative_max_abs_diff(value[key], reference[key])
        passed &= relative <= relative_tolerance
        parts.append(f"{key} {diff:.2e} ({relative:.1e} rel.)")
    return passed, ", ".join(parts)


def compare_mask_sets(
    value: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], min_mean_iou: float
) -> tuple[bool, str]:
    """``key -> [..., H, W] bool`` masks against a reference: mean IoU over all masks.

    Returns:
        ``(same keys and mean IoU >= min_mean_iou, "mean IoU x, min y over n masks")``.
    """
    if set(value) != set(reference):
        return False, f"different keys: {sorted(value)} vs {sorted(reference)}"
    ious = [mask_ious(value[k], reference[k]).ravel() for k in reference]
    ious = np.concatenate(ious) if ious else np.zeros(0)
    if ious.size == 0:
        return True, "no masks"
    mean = float(ious.mean())
    return mean >= min_mean_iou, f"mean IoU {mean:.4f}, min {ious.min():.4f} over {ious.size} masks"


def compare_decisions(value: Mapping[str, bool], reference: Mapping[str, bool]) -> tuple[bool, str]:
    """Fusion decisions (``exp_id -> multi_object``): all equal?"""
    if set(value) != set(reference):
        return False, f"different expressions: {sorted(value)} vs {sorted(reference)}"
    differ = sorted(e for e in reference if bool(value[e]) != bool(reference[e]))
    multi = sum(bool(v) for v in reference.values())
    detail = f"{len(reference) - len(differ)}/{len(reference)} equal ({multi} multi-object)"
    if differ:
        detail += f"; differ: {differ}"
    return not differ, detail


def cap_fraction(peak_normal: int, peak_fallback: int, total: int) -> float | None:
    """The memory fraction between the fallback's and the normal way's peaks (midway), or
    ``None`` when they are closer than :data:`MIN_CAP_GAP_BYTES` (no cap can tell them apart)."""
    if peak_normal - peak_fallback < MIN_CAP_GAP_BYTES:
        return None
    return (peak_normal + peak_fallback) / 2 / total


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def too_close(peak_normal: int, peak_fallback: int) -> str:
    """Why no memory cap can tell the two ways apart (see :func:`cap_fraction`)."""
    return f"peaks {gib(peak_normal)} and {gib(peak_fallback)} too close for a cap"


# -- set-up ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every check uses: the generated models, clip and configuration, and loaded models.

    Attributes:
        work: the working folder.
        device: ``cuda:0``.
        cfg: the pipeline configuration selecting the generated models and split.
        overrides: the ``key=value`` overrides that make ``cfg`` (for the command lines).
        split_root: the generated MeViS-layout split (one video).
        video_id: its video.
        images: its frames (PIL RGB).
        frame_paths: their JPEGs.
        sentences: ``exp_id -> sentence``.
        object_masks: ``[T, K, H, W] bool`` the clip's objects (stage-2 prompts of the CPU check).
        short_frames: frames of the GPU-vs-CPU comparison.
        autocast_frames: frames of the autocast comparison.
        models: the loaded models (see :meth:`stage1_model`, :meth:`refiner`).
    """

    work: Path
    device: str
    cfg: Any
    overrides: list[str]
    split_root: Path
    video_id: str
    images: list
    frame_paths: list[Path]
    sentences: dict[str, str]
    object_masks: np.ndarray
    short_frames: int = SHORT_FRAMES
    autocast_frames: int = AUTOCAST_FRAMES
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def frame_names(self) -> list[str]:
        return [p.stem for p in self.frame_paths]

    def stage1_model(self):
        """ReferDINO on the GPU, loaded once (float32, as configured)."""
        if "stage1" not in self.models:
            from stage1_referdino.runner import build_stage1_model

            self.models["stage1"] = build_stage1_model(self.cfg.stage1, self.device)
        return self.models["stage1"]

    def refiner(self, **changes):
        """The tracker (``stage2.tracker``, SAM 2 or SAMURAI) on the GPU, loaded once; a
        :class:`Refiner` with ``changes`` to the ``stage2`` options, its tracker sharing the
        loaded SAM 2 (a ``Sam2Tracker`` is the predictor and the options it reads)."""
        from stage2_sam2_refine.refine import Refiner
        from stage2_sam2_refine.tracker import build_tracker

        if "stage2" not in self.models:
            self.models["stage2"] = build_tracker(self.cfg.stage2, device=self.device)
        options = dataclasses.replace(self.cfg.stage2, **changes)
        return Refiner(dataclasses.replace(self.models["stage2"], options=options), options)


def write_split(root: Path, videos: Mapping[str, tuple[list, Mapping[str, str]]]) -> Path:
    """A MeViS-layout split: ``videos`` maps a video id to ``(frames, exp_id -> sentence)``."""
    meta: dict[str, Any] = {"videos": {}}
    for video_id, (frames, sentences) in videos.items():
        folder = root / "JPEGImages" / video_id
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{index:05d}" for index in range(len(frames))]
        for name, frame in zip(names, frames, strict=True):
            frame.save(folder / f"{name}.jpg", quality=95)
        meta["videos"][video_id] = {
            "frames": names,
            "expressions": {
                exp_id: {"exp": text, "obj_id": [0], "anno_id": [f"{video_id}-{exp_id}"]}
                for exp_id, text in sentences.items()
            },
        }
    (root / "meta_expressions.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return root


def sentences_for(count: int) -> dict[str, str]:
    """``count`` expressions ``"0"``, ``"1"``, ... cycling :data:`clips.SENTENCES` (numbered after the
    first round)."""
    out = {}
    for index in range(count):
        text = clips.SENTENCES[index % len(clips.SENTENCES)]
        out[str(index)] = (
            text if index < len(clips.SENTENCES) else f"{text} {index // len(clips.SENTENCES)}"
        )
    return out


def model_overrides(work: Path, sam2_model: str, *, tiny: bool) -> list[str]:
    """``key=value`` overrides selecting the random real-size models, written into ``work``
    (or, ``tiny``, the fixtures' tiny models: the tests' own code on the CPU, quickly)."""
    from benchmarks import real_size

    if tiny:
        referdino, sam2 = real_size.FIXTURES / "referdino_tiny", real_size.FIXTURES / "sam2_tiny"
        return [
            f"stage1.model={referdino / 'model.yaml'}",
            f"stage1.checkpoint={referdino / 'referdino_checkpoint.pth'}",
            "stage1.short_side=64",
            f"stage2.model={sam2 / 'tiny_sam2.1.yaml'}",
            f"stage2.checkpoint={sam2 / 'weights_propagating.pt'}",
        ]
    referdino = real_size.write_referdino(work)
    sam2_checkpoint = real_size.write_sam2(work, sam2_model)
    return [
        *referdino.overrides(),
        f"stage2.model={sam2_model}",
        f"stage2.checkpoint={sam2_checkpoint}",
    ]


def prepare(args: argparse.Namespace, work: Path) -> Setup:
    """Write the random-weight models and the generated clip; compose the configuration.

    Args:
        args: :func:`parse_args`'s (sizes, SAM 2 model; ``cpu``: the fixtures' tiny models on
            the CPU instead of the real-size ones on ``cuda:0``, see :func:`model_overrides`).
        work: where everything goes.
    """
    from referdino_plus.config import load_config
    from rvos.mevis import MevisSplit

    height, width = args.frame_size
    frames, object_masks = clips.synthetic_clip(args.frames, height, width)
    sentences = sentences_for(args.expressions)
    video_id = f"clip{height}p"
    split_root = write_split(work / "split", {video_id: (frames, sentences)})
    overrides = [
        *model_overrides(work / "models", args.sam2_model, tiny=args.cpu),
        f"stage1.top_k={TOP_K}",
        f"data.root={split_root}",
        f"work_dir={work / 'run'}",
        f"submission_dir={work / 'submissions'}",
    ]
    cfg = load_config(overrides)
    split = MevisSplit(split_root)
    return Setup(
        work=work,
        device="cpu" if args.cpu else "cuda:0",
        cfg=cfg,
        overrides=overrides,
        split_root=split_root,
        video_id=video_id,
        images=split.load_frames(video_id),
        frame_paths=split.frame_paths(video_id),
        sentences=sentences,
        object_masks=object_masks,
        short_frames=args.short_frames,
        autocast_frames=args.autocast_frames,
    )


# -- helpers on the GPU ----------------------------------------------------------------------------


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """float32 matrix products and convolutions without TF32 (restored afterwards)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name = value`` for the body (restored afterwards)."""
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


@contextlib.contextmanager
def memory_cap(fraction: float, device: str) -> Iterator[None]:
    """``torch.cuda.set_per_process_memory_fraction(fraction)`` for the body, then no cap."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


@contextlib.contextmanager
def captured_warnings(logger_name: str) -> Iterator[list[str]]:
    """Messages of WARNING records of ``logger_name`` (and below it) logged in the body."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    target = logging.getLogger(logger_name)
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


def measured(device: str, fn: Callable[[], Any]) -> tuple[Any, float, int, int]:
    """``(fn(), seconds, peak allocated bytes, peak reserved bytes)`` on ``device``, from a
    released cache and reset peak counters (peaks 0 off CUDA)."""
    import torch

    if not device.startswith("cuda"):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start, 0, 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return (
        result,
        seconds,
        torch.cuda.max_memory_allocated(device),
        torch.cuda.max_memory_reserved(device),
    )


def run_stages(setup: Setup, refiner, *, num_frames: int | None = None, stage1_options=None):
    """Stages 1, 2 and 3 in this process on the first ``num_frames`` frames.

    Returns:
        ``(stage-1, stage-2, stage-3 records)``.
    """
    from stage1_referdino.runner import stage1_record
    from stage2_sam2_refine.runner import stage2_record
    from stage3_fusion.runner import fuse_video

    frames = slice(0, num_frames)
    stage1 = stage1_record(
        setup.stage1_model(),
        setup.images[frames],
        setup.sentences,
        stage1_options or setup.cfg.stage1,
        video_id=setup.video_id,
        frame_names=setup.frame_names[frames],
    )
    stage2 = stage2_record(refiner, stage1, setup.frame_paths[frames])
    return stage1, stage2, fuse_video(stage2, setup.cfg.stage3)


def union_masks(stage1, stage2) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per expression, the stage-1 answer ``[T, H, W]`` and the SAM 2 union ``[T, H, W]``."""
    answers = {e: p.answer.decode() for e, p in stage1.expressions.items()}
    unions = {e: r.sam2_union() for e, r in stage2.expressions.items()}
    return answers, unions


def fused_masks(stage3) -> dict[str, np.ndarray]:
    return {e: f.masks.decode() for e, f in stage3.expressions.items()}


def decisions(stage3) -> dict[str, bool]:
    return {e: bool(f.multi_object) for e, f in stage3.expressions.items()}


# -- speed -----------------------------------------------------------------------------------------


def measure_speed(setup: Setup, measurements: Measurements) -> int:
    """Stages 1-3 the pipeline's way (wall time, peak memory), then a synchronised pass per
    stage for the components' shares, then stage 1's post-processing at MeViS size; the rows
    go to ``measurements``.

    Returns:
        the number of objects SAM 2 tracked (over all expressions).
    """
    # warm-up: kernels and allocations of the first call (a few frames, one expression)
    run_stages(setup, setup.refiner(), num_frames=2)
    stage1, objects = stage_speed(setup, measurements)
    model_per_frame = stage1_components(setup, measurements)
    stage2_components(setup, measurements, stage1)
    postprocess_speed(setup, measurements, model_per_frame)
    return objects


def stage_speed(setup: Setup, measurements: Measurements) -> tuple[Any, int]:
    """Each stage's wall time and peak memory on the whole clip.

    Returns:
        ``(the stage-1 record, the number of objects SAM 2 tracked)``.
    """
    from stage1_referdino.runner import stage1_record
    from stage2_sam2_refine.runner import stage2_record
    from stage3_fusion.runner import fuse_video

    device, num_frames = setup.device, len(setup.images)
    num_expressions = len(setup.sentences)
    model, refiner = setup.stage1_model(), setup.refiner()
    stage1, s1_time, s1_peak, _ = measured(
        device,
        lambda: stage1_record(
            model,
            setup.images,
            setup.sentences,
            setup.cfg.stage1,
            video_id=setup.video_id,
            frame_names=setup.frame_names,
        ),
    )
    stage2, s2_time, s2_peak, _ = measured(
        device, lambda: stage2_record(refiner, stage1, setup.frame_paths)
    )
    start = time.perf_counter()
    fuse_video(stage2, setup.cfg.stage3)
    s3_time = time.perf_counter() - start
    objects = sum(len(r.kept_columns) for r in stage2.expressions.values())
    stage2_precision = setup.cfg.stage2.autocast if setup.on_gpu else "float32"
    for name, seconds, peak in (
        ("1 ReferDINO (float32)", s1_time, gib(s1_peak) if setup.on_gpu else "-"),
        (
            f"2 SAM 2 ({objects} objects, {stage2_precision})",
            s2_time,
            gib(s2_peak) if setup.on_gpu else "-",
        ),
        ("3 fusion (CPU)", s3_time, "-"),
    ):
        measurements.speed.append(
            [
                name,
                f"{seconds:.2f} s",
                f"{num_frames / seconds:.1f}",
                f"{num_frames * num_expressions / seconds:.1f}",
                peak,
            ]
        )
    return stage1, objects


def stage1_components(setup: Setup, measurements: Measurements) -> float:
    """Stage 1, component by component (in line, synchronised).

    Returns:
        the model's seconds per expression-frame (backbone shared by the expressions).
    """
    import torch

    from benchmarks.bench_stage1_backbone_reuse import POSTPROCESS, TRANSFORMER
    from benchmarks.timing import ComponentTimer
    from stage1_referdino import preprocess
    from stage1_referdino.postprocess import proposals_from_outputs

    model = setup.stage1_model()
    timer = ComponentTimer(torch.device(setup.device))
    height, width = setup.images[0].height, setup.images[0].width
    with torch.inference_mode():
        with timer.measure("backbone"):
            video = preprocess(setup.images, short_side=setup.cfg.stage1.short_side)
            features = model.encode_video(video)
        for sentence in setup.sentences.values():
            with timer.measure(TRANSFORMER):
                out = model.infer_features(features, sentence)
            with timer.measure(POSTPROCESS):
                proposals_from_outputs(
                    out["pred_logits"][..., 0].sigmoid().cpu().numpy(),
                    out["pred_boxes"].cpu().numpy(),
                    out["pred_masks"],
                    (height, width),
                    top_k=setup.cfg.stage1.top_k,
                    obj_threshold=setup.cfg.stage1.obj_threshold,
                )
        del features
    labels = {
        "backbone": "preprocessing and backbone",
        TRANSFORMER: "text encoder, transformer and heads",
        POSTPROCESS: f"mask post-processing (on {'the GPU' if setup.on_gpu else 'the CPU'})",
    }
    add_component_rows(measurements, "1", timer, labels)
    return (timer.seconds["backbone"] + timer.seconds[TRANSFORMER]) / (
        len(setup.images) * len(setup.sentences)
    )


def stage2_components(setup: Setup, measurements: Measurements, stage1) -> None:
    """Stage 2, component by component, on ``stage1``'s proposals."""
    import torch

    from benchmarks.timing import ComponentTimer
    from stage2_sam2_refine import runner as stage2_runner
    from stage2_sam2_refine.runner import stage2_record

    refiner = setup.refiner()
    timer = ComponentTimer(torch.device(setup.device))
    components = {
        "open_video": "frames",
        "forward_image": "encoder",
        "_run_single_frame_inference": "tracking",
        "_run_memory_encoder": "tracking",
        "_get_orig_video_res_output": "post",
    }
    with (
        timer.patch(refiner.tracker.predictor, components),
        attribute(
            stage2_runner,
            "refinement_record",
            timer.timed("post", stage2_runner.refinement_record),
        ),
        timer.measure("other"),
    ):
        stage2_record(refiner, stage1, setup.frame_paths)
    labels = {
        "frames": "frames: decode, resize, upload",
        "encoder": "image encoder",
        "tracking": "per-object tracking",
        "post": "mask post-processing and encoding",
        "other": "other (prompts, thresholding)",
    }
    add_component_rows(measurements, "2", timer, labels)


def postprocess_speed(setup: Setup, measurements: Measurements, model_per_frame: float) -> None:
    """Stage 1's post-processing of one MeViS-size expression on the device, against the model's ``model_per_frame`` seconds per expression-frame."""
    import torch

    from benchmarks.bench_stage1_backbone_reuse import time_postprocessing
    from stage1_referdino import preprocess

    height, width = setup.images[0].height, setup.images[0].width
    video = preprocess(setup.images[:1], short_side=setup.cfg.stage1.short_side)
    logits_size = (-(-video.shape[2] // 4), -(-video.shape[3] // 4))
    seconds = time_postprocessing(
        POST_FRAMES, POST_QUERIES, (height, width), logits_size, torch.device(setup.device)
    )
    for way, value in seconds.items():
        per_frame = value / POST_FRAMES
        measurements.postprocess.append(
            [
                f"{way} way, {POST_FRAMES} frames of {width}x{height}, {POST_QUERIES} queries",
                f"{value:.2f} s",
                f"{1000 * per_frame:.1f} ms",
                f"{100 * per_frame / (per_frame + model_per_frame):.0f}%",
            ]
        )
    measurements.postprocess.append(
        [
            "model per expression-frame (shared features)",
            "-",
            f"{1000 * model_per_frame:.1f} ms",
            "",
        ]
    )


def add_component_rows(
    measurements: Measurements, stage: str, timer, labels: Mapping[str, str]
) -> None:
    total = timer.total()
    for key, label in labels.items():
        if key in timer.seconds:
            seconds = timer.seconds[key]
            measurements.components.append(
                [stage, label, f"{seconds:.2f} s", f"{100 * seconds / total:.0f}%"]
            )


# -- the out-of-memory fallbacks -------------------------------------------------------------------


def run_stage1_worker(setup: Setup, name: str, cache_device) -> Any:
    """The stage-1 worker's processing of the clip (its out-of-memory retry included), with
    ``stage1.feature_cache_device=cache_device``, the loaded model, and records in
    ``work/<name>``; returns the record it wrote."""
    from referdino_plus.pipeline import stage_fingerprints, stage_job
    from rvos import intermediates as im
    from stage1_referdino import runner as stage1_runner

    model = setup.stage1_model()
    base = stage_job(setup.cfg, stage_fingerprints(setup.cfg), 1)
    options = dataclasses.replace(setup.cfg.stage1, feature_cache_device=cache_device)
    records = dataclasses.replace(base.records, work_dir=setup.work / name)
    job = dataclasses.replace(base, records=records, options=options)
    with attribute(stage1_runner, "build_stage1_model", lambda options, device: model):
        stage1_runner.build_video_processor(job, setup.device)(setup.video_id)
    return im.load_stage1(records.path(setup.video_id))


def fallback_outcome(
    fraction: float,
    total: int,
    peaks: tuple[int, int],
    warnings: Sequence[str],
    capped: Mapping[str, np.ndarray],
    normal: Mapping[str, np.ndarray],
) -> tuple[bool, str]:
    """Judge a run under a memory cap: an out-of-memory fallback was logged and the masks equal
    the normal run's (``exp_id -> masks``).

    Args:
        fraction, total: the cap, as a fraction of the device's ``total`` bytes.
        peaks: ``(fallback way, normal way)`` peak bytes without a cap.
        warnings: the warnings logged under the cap.
    """
    fell_back = [w for w in warnings if "out of memory" in w]
    passed, detail = compare_mask_sets(capped, normal, SAME_MASKS_MIN_IOU)
    taken = f"fallback taken ({fell_back[0][:90]})" if fell_back else "fallback NOT taken"
    return passed and bool(fell_back), (
        f"cap {gib(fraction * total)} between peaks {gib(peaks[0])} and {gib(peaks[1])}; "
        f"{taken}; {detail}"
    )
