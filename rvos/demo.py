"""Try ReferDINO-Plus on your own video: a clip and sentences in, coloured masks out.

    python run_pipeline.py demo --video PATH --text "the dog running to the left" [--text ...]
                                [--out DIR] [--frame-step N] [--max-frames N] [--cpu | --gid N]
                                [key=value ...]

``PATH`` is a video file (mp4, mov, webm, ... anything PyAV decodes) or a folder of frames
(``.jpg``/``.jpeg``/``.png``, in natural name order: ``2.jpg`` before ``10.jpg``). The three stages
run in this process on one device, configured by ``configs/pipeline.yaml`` and the same
``key=value`` overrides as the pipeline (``stage1.*``/``stage2.*`` choose the models,
``stage3.*`` the fusion rule, ``visualize.*``/``demo.*`` the drawing). ``DIR`` receives:

- ``overlay.mp4``: the frames with each sentence's masks in its colour (H.264, yuv420p);
- ``masks/<sentence index>/<frame>.png``: the fused masks, mode L, 0/255, frame size; a video's
  frames are named by their index in the video (``00000``, ``00002``, ... with
  ``--frame-step 2``), a folder's keep their file names;
- ``summary.json``: the sentences, their kept queries and fusion decisions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from rvos.io import atomic_output
from rvos.visualize import (
    VisualizeOptions,
    caption_band,
    color_of,
    hex_color,
    overlay_masks,
    pad_to_even,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from rvos.intermediates import Stage1Video, Stage2Video, Stage3Video

logger = logging.getLogger(__name__)

DEFAULT_OUT_ROOT = Path("work") / "demo"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# Encoders tried in order for overlay.mp4 (libx264 ships with PyAV's wheels).
H264_ENCODERS = ("libx264", "h264")
# How PyTorch words out-of-memory errors (CUDA, CPU allocator).
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory")
# Exit codes: bad arguments or configuration; unusable input, missing weights or a failed run.
EXIT_USAGE, EXIT_FAILURE = 2, 1


class DemoError(Exception):
    """A problem the user can fix; the message is one line, ``exit_code`` the process status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="run on the CPU")
    device.add_argument("--gid", type=int, metavar="N", help="run on GPU N (default: GPU 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of configs/pipeline.yaml"
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags and ``key=value`` overrides in any order.

    Raises:
        DemoError: a positional argument that is not ``key=value``, or a non-positive
            ``--frame-step``/``--max-frames``.
    """
    args = build_parser().parse_intermixed_args(list(argv))
    stray = [a for a in args.overrides if "=" not in a]
    if stray:
        raise DemoError(
            f"unexpected argument {stray[0]!r}: overrides are key=value, sentences go after --text",
            EXIT_USAGE,
        )
    if args.frame_step < 1:
        raise DemoError(f"--frame-step {args.frame_step}: expected N >= 1", EXIT_USAGE)
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames {args.max_frames}: expected N >= 1", EXIT_USAGE)
    return args


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


def select_device(gid: int | None, cpu: bool) -> str:
    """``--cpu``/``--gid`` -> a torch device string; GPU 0 when there is one, else the CPU.

    Raises:
        DemoError: ``gid`` is not a GPU of this machine.
    """
    if cpu:
        return "cpu"
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gid is None:
        return "cuda:0" if available else "cpu"
    if not 0 <= gid < available:
        raise DemoError(f"--gid {gid}: this machine has {available} GPU(s)", EXIT_USAGE)
    return f"cuda:{gid}"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``configs/pipeline.yaml`` with hydra ``overrides``, checked (as ``run_pipeline.py`` does).

    Raises:
        DemoError: an unknown key or a value out of its domain.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rvos import config

    try:
        cfg = config.compose_config(overrides)
    except (HydraException, OmegaConfBaseException, config.ConfigError) as err:
        raise DemoError(" ".join(str(err).split()), EXIT_USAGE) from None
    return cfg


@dataclass(frozen=True)
class DemoOptions:
    """The ``demo`` block of ``configs/pipeline.yaml``.

    Attributes:
        fps: overlay frame rate for a folder of frames.
        crf: H.264 constant rate factor of ``overlay.mp4`` (0 lossless .. 51 worst).
    """

    fps: float = 10.0
    crf: int = 23

    def __post_init__(self) -> None:
        if not isinstance(self.fps, int | float) or isinstance(self.fps, bool) or self.fps <= 0:
            raise ValueError(f"demo.fps={self.fps!r}: expected a positive number")
        if not isinstance(self.crf, int) or isinstance(self.crf, bool) or not 0 <= self.crf <= 51:
            raise ValueError(f"demo.crf={self.crf!r}: expected an integer in [0, 51]")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> DemoOptions:
        """From the ``demo`` config section (missing keys take the defaults)."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown demo key(s) {unknown}; known: ['crf', 'fps']")
        return cls(**section)


def check_checkpoints(cfg: Mapping[str, Any]) -> None:
    """Fail before any decoding when a model checkpoint is missing.

    Raises:
        DemoError: naming the key, the path and ``download_ckpts.sh``.
    """
    for key in ("stage1", "stage2"):
        path = Path(str(cfg[key]["checkpoint"]))
        if not path.is_file():
            raise DemoError(
                f"{key}.checkpoint={path}: checkpoint not found; run `bash download_ckpts.sh` "
                f"(see README) or point {key}.checkpoint= at your file"
            )


# ----------------------------------------------------------------------------- input


@dataclass
class Clip:
    """The frames the demo segments.

    Attributes:
        source: the video file or frame folder.
        frames: ``T`` RGB images of one size.
        frame_names: ``T`` names of the mask PNGs (without ``.png``).
        frame_paths: the image files of a frame folder (``None`` for a decoded video).
        fps: frame rate of the overlay video.
    """

    source: Path
    frames: list[Image.Image]
    frame_names: list[str]
    frame_paths: list[Path] | None
    fps: Fraction

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.frames[0].height, self.frames[0].width

    @property
    def name(self) -> str:
        return source_name(self.source)


def source_name(path: Path) -> str:
    """A video file's stem or a frame folder's name (``clip.mp4`` -> ``clip``)."""
    path = path.resolve()
    return path.stem if path.is_file() else path.name


def natural_key(name: str) -> list[Any]:
    """Sort key ordering embedded numbers by value: ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def load_clip(path: Path, *, frame_step: int, max_frames: int | None, folder_fps: float) -> Clip:
    """Read a video file or a frame folder, keeping every ``frame_step``-th frame.

    Raises:
        DemoError: missing path, unreadable or corrupt input, no frames, frames of mixed sizes.
    """
    if not path.exists():
        raise DemoError(f"--video {path}: no such file or folder")
    if path.is_dir():
        return read_frame_folder(path, frame_step=frame_step, max_frames=max_frames, fps=folder_fps)
    return decode_video(path, frame_step=frame_step, max_frames=max_frames, fallback_fps=folder_fps)


def read_frame_folder(folder: Path, *, frame_step: int, max_frames: int | None, fps: float) -> Clip:
    """The ``.jpg``/``.jpeg``/``.png`` images of ``folder`` in natural order, subsampled."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise DemoError(f"--video {folder}: no {'/'.join(FRAME_SUFFIXES)} frames in this folder")
    files = files[::frame_step][:max_frames]
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DemoError(f"--video {folder}: two frames are named {duplicate!r}")
    frames = []
    for path in files:
        try:
            with Image.open(path) as image:
                frames.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise DemoError(f"frame {path} is unreadable ({err})") from None
        if frames[-1].size != frames[0].size:
            raise DemoError(
                f"frame {path.name} is {frames[-1].width}x{frames[-1].height}, "
                f"{files[0].name} is {frames[0].width}x{frames[0].height}: all frames need one size"
            )
    return Clip(folder, frames, names, files, Fraction(fps).limit_denominator(1001))


def _ffmpeg_reason(err: Exception) -> str:
    """FFmpeg's own words for ``err``, without the errno and path PyAV adds."""
    return str(getattr(err, "strerror", None) or err)


def decode_video(
    path: Path, *, frame_step: int, max_frames: int | None, fallback_fps: float
) -> Clip:
    """Decode ``path`` with PyAV (display rotation applied), keeping every ``frame_step``-th frame.

    Frames are named by their index in the video, zero-padded to 5 digits. A video that breaks
    off after some frames (e.g. a truncated file) keeps the frames decoded so far, with a warning.

    Raises:
        DemoError: the file cannot be opened as a video, or no frame decodes.
    """
    import av
    from tqdm import tqdm

    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise DemoError(f"--video {path}: not a readable video ({_ffmpeg_reason(err)})") from None
    frames: list[Image.Image] = []
    names: list[str] = []
    with container:
        if not container.streams.video:
            raise DemoError(f"--video {path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = Fraction(rate) if rate else Fraction(fallback_fps).limit_denominator(1001)
        total = -(-stream.frames // frame_step) if stream.frames else None
        if total is not None and max_frames is not None:
            total = min(total, max_frames)
        # delay: no bar at all when decoding fails at once.
        with tqdm(total=total, desc="decoding", unit="frame", dynamic_ncols=True, delay=1) as bar:
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if index % frame_step:
                        continue
                    image = frame.to_image()
                    if frame.rotation:
                        # The display matrix's counter-clockwise angle, as players apply it.
                        image = image.rotate(frame.rotation, expand=True)
                    frames.append(image)
                    names.append(f"{index:05d}")
                    bar.update()
                    if max_frames is not None and len(frames) >= max_frames:
                        break
            except av.FFmpegError as err:
                if not frames:
                    raise DemoError(
                        f"--video {path}: cannot decode it ({_ffmpeg_reason(err)})"
                    ) from None
                logger.warning(
                    "%s: decoding stopped after %d frame(s) (%s); using those",
                    path,
                    len(frames),
                    _ffmpeg_reason(err),
                )
    if not frames:
        raise DemoError(f"--video {path}: no video frame could be decoded")
    return Clip(path, frames, names, None, fps / frame_step)


@contextlib.contextmanager
def frame_files(clip: Clip) -> Iterator[list[Path]]:
    """The clip's frames as image files for SAM 2: a folder's own files, or temporary
    lossless PNGs of a decoded video (removed afterwards)."""
    if clip.frame_paths is not None:
        yield list(clip.frame_paths)
        return
    with tempfile.TemporaryDirectory(prefix="referdino_demo_") as tmp:
        paths = []
        for name, image in zip(clip.frame_names, clip.frames, strict=True):
            paths.append(Path(tmp) / f"{name}.png")
            image.save(paths[-1], compress_level=1)
        yield paths


# ----------------------------------------------------------------------------- the stages


def build_model(
    step: str, factory: Callable[[dict, str], Any], section: Mapping[str, Any], device: str
) -> Any:
    """``factory(section, device)``; a missing or mismatched file becomes a one-line error.

    Raises:
        DemoError: naming the stage and what is wrong (a missing checkpoint names
            ``download_ckpts.sh``).
    """
    try:
        return factory(dict(section), device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise DemoError(f"{step}: cannot load the model: {' '.join(str(err).split())}") from None


@contextlib.contextmanager
def explain_out_of_memory(device: str) -> Iterator[None]:
    """Turn an out-of-memory error into a :class:`DemoError` that says what to reduce."""
    import torch

    try:
        yield
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        message = str(err).lower()
        if not isinstance(err, torch.cuda.OutOfMemoryError) and not any(
            marker in message for marker in OUT_OF_MEMORY_MARKERS
        ):
            raise
        raise DemoError(
            f"out of memory on {device}: use fewer frames (--frame-step N, --max-frames N), a "
            "smaller stage1.short_side, stage2.offload_video_to_cpu=true, or --cpu"
        ) from None


def segment(
    clip: Clip, sentences: Sequence[str], cfg: Mapping[str, Any], device: str
) -> tuple[Stage1Video, Stage2Video, Stage3Video]:
    """Stages 1-3 on ``clip`` for each sentence (``exp_id`` = its index as a string).

    Each model is loaded, used for all sentences, and released before the next one loads.

    Returns:
        ``(stage1, stage2, stage3)`` records (:mod:`rvos.intermediates` types).
    Raises:
        DemoError: a model that cannot be loaded, or out of memory.
    """
    import torch

    from stage1_referdino.runner import build_stage1_model, stage1_record
    from stage2_sam2_refine.runner import build_stage2_refiner, stage2_record
    from stage3_fusion.runner import fuse_video

    expressions = {str(index): text for index, text in enumerate(sentences)}
    model = build_model("stage 1 (ReferDINO)", build_stage1_model, cfg["stage1"], device)
    with explain_out_of_memory(device):
        stage1 = stage1_record(
            model,
            clip.frames,
            expressions,
            cfg["stage1"],
            video_id=clip.name,
            frame_names=list(clip.frame_names),
            progress=True,
        )
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    refiner = build_model("stage 2 (SAM 2)", build_stage2_refiner, cfg["stage2"], device)
    with explain_out_of_memory(device), frame_files(clip) as paths:
        stage2 = stage2_record(refiner, stage1, paths, progress=True)
    del refiner
    stage3 = fuse_video(
        stage2,
        shrink_ratio=Fraction(*cfg["stage3"]["shrink_ratio"]),
        majority=Fraction(*cfg["stage3"]["majority"]),
    )
    return stage1, stage2, stage3


# ----------------------------------------------------------------------------- outputs


def _encoder_name() -> str:
    """The first H.264 encoder of :data:`H264_ENCODERS` this PyAV build has."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        return name
    raise DemoError(f"this PyAV build has no H.264 encoder (tried {', '.join(H264_ENCODERS)})")


@contextlib.contextmanager
def h264_writer(
    path: Path, *, size: tuple[int, int], fps: Fraction, crf: int
) -> Iterator[Callable[[np.ndarray], None]]:
    """Write an H.264 ``yuv420p`` mp4 atomically; yields ``write(picture)``.

    Args:
        size: ``(H, W)`` of the pictures, both even.
        fps: frame rate.
        crf: constant rate factor (0 lossless .. 51 worst).
    Yields:
        a function taking one ``[H, W, 3] uint8`` RGB picture.
    """
    import av

    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(_encoder_name(), rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}

        def write(picture: np.ndarray) -> None:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)

        yield write
        for packet in stream.encode():
            container.mux(packet)


def write_outputs(
    out_dir: Path,
    clip: Clip,
    sentences: Sequence[str],
    fused: Stage3Video,
    *,
    visual: VisualizeOptions,
    crf: int,
) -> None:
    """``overlay.mp4`` and ``masks/<index>/<frame>.png`` in one pass over the frames.

    Each frame gets its sentences' masks blended in their colours and outlined, above a band with
    the sentences; the picture is padded to even sides. The masks are written to a hidden folder
    first and replace ``masks/`` at the end, so an earlier run's PNGs never mix with these.
    """
    from tqdm import tqdm

    from stage3_fusion.archive import encode_png

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = [color_of(i) for i in range(len(sentences))]
    band = caption_band(sentences, colors, clip.size[1])
    masks = [fused.expressions[str(i)].masks for i in range(len(sentences))]
    height, width = clip.size[0] + band.shape[0], clip.size[1]
    staging = Path(tempfile.mkdtemp(prefix=".masks.", dir=out_dir))
    try:
        folders = [staging / str(i) for i in range(len(sentences))]
        for folder in folders:
            folder.mkdir()
        video_size = (height + height % 2, width + width % 2)
        with h264_writer(out_dir / "overlay.mp4", size=video_size, fps=clip.fps, crf=crf) as write:
            for t in tqdm(
                range(len(clip.frames)), desc="writing", unit="frame", dynamic_ncols=True
            ):
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
        shutil.rmtree(out_dir / "masks", ignore_errors=True)
        staging.rename(out_dir / "masks")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def summarize(
    clip: Clip,
    sentences: Sequence[str],
    records: tuple[Stage1Video, Stage2Video, Stage3Video],
    cfg: Mapping[str, Any],
    device: str,
    frame_step: int,
) -> dict[str, Any]:
    """The content of ``summary.json``: input, models, and per sentence its queries and fusion."""
    stage1, stage2, stage3 = records
    entries = []
    for index, text in enumerate(sentences):
        exp_id = str(index)
        proposals = stage1.expressions[exp_id]
        refinement = stage2.expressions[exp_id]
        fusion = stage3.expressions[exp_id]
        kept = np.asarray(refinement.kept_queries, dtype=np.int64)
        if kept.size == 0:
            output = (
                f"empty: no query above stage2.score_threshold={cfg['stage2']['score_threshold']}"
            )
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
        "stage1": {
            "model": str(cfg["stage1"]["model"]),
            "checkpoint": str(cfg["stage1"]["checkpoint"]),
        },
        "stage2": {
            "model": str(cfg["stage2"]["model"]),
            "checkpoint": str(cfg["stage2"]["checkpoint"]),
        },
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
    from omegaconf import OmegaConf
    from tqdm.contrib.logging import logging_redirect_tqdm

    sentences = check_sentences(args.text)
    if not args.video.exists():
        raise DemoError(f"--video {args.video}: no such file or folder")
    out_dir = args.out or DEFAULT_OUT_ROOT / source_name(args.video)
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"--out {out_dir}: exists and is not a folder")
    cfg = compose_config(args.overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    try:
        visual = VisualizeOptions.from_config(plain.get("visualize"))
        demo = DemoOptions.from_config(plain.get("demo"))
    except ValueError as err:
        raise DemoError(str(err), EXIT_USAGE) from None
    device = select_device(args.gid, args.cpu)
    check_checkpoints(plain)
    with logging_redirect_tqdm():
        clip = load_clip(
            args.video,
            frame_step=args.frame_step,
            max_frames=args.max_frames,
            folder_fps=demo.fps,
        )
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
        records = segment(clip, sentences, plain, device)
        summary = summarize(clip, sentences, records, plain, device, args.frame_step)
        for entry in summary["sentences"]:
            if not entry["kept_queries"]:
                logger.warning(
                    "sentence %d (%r): no query scored above stage2.score_threshold; its masks "
                    "are empty",
                    entry["index"],
                    entry["text"],
                )
        write_outputs(out_dir, clip, sentences, records[2], visual=visual, crf=demo.crf)
        write_summary(out_dir / "summary.json", summary)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``run_pipeline.py demo ...``; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "-q" in argv or "--quiet" in argv
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args = parse_args(argv)
        out_dir = run_demo(args)
    except DemoError as err:
        logger.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    logger.info("wrote %s: overlay.mp4, masks/, summary.json", out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
