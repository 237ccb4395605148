"""The jobs of the demo in a browser (``run_pipeline.py app``): upload a clip, type sentences,
watch the masks.

A job runs the demo's steps (:class:`~referdino_plus.segmenter.Segmenter`,
:func:`~referdino_plus.demo.write_outputs`, :func:`~referdino_plus.demo.summarize`) on one device,
with the models loaded once when the server starts and kept; jobs run one at a time, the others
wait in Gradio's queue. Each job writes the demo's outputs and ``masks.zip`` into its own folder
under ``app.results_dir`` (the last ``app.keep_results`` jobs are kept); the limits are the
``app`` section of ``configs/pipeline.yaml``.

The page (:mod:`referdino_plus.app_page`, the only module that imports Gradio) uses this module;
the command (:mod:`referdino_plus.app_server`) starts both. The jobs run and are tested without
Gradio.
"""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from referdino_plus.config import PipelineConfig
from referdino_plus.demo import summarize, write_outputs, write_summary
from referdino_plus.segmenter import (
    DemoError,
    ProgressCallback,
    Segmenter,
    StageProgress,
    check_models,
    with_stage2,
)
from rvos.drawing import evenly_spaced
from rvos.io import atomic_output
from rvos.video import VideoError, clip_duration, frame_files, h264_writer, load_clip
from stage2_sam2_refine.options import PromptKind, Tracker

logger = logging.getLogger(__name__)

OUT_OF_MEMORY_HINT = (
    "use fewer frames (a larger frame step, a smaller max frames), a smaller SAM 2, or run the "
    "app with --cpu"
)
# The step a job reports while it decodes (a video) or checks (a frame folder) the clip.
READING = "reading the clip"
# The page's SAM 2 choice that keeps stage2.model and stage2.checkpoint.
CONFIGURED_SAM2 = "configured"
GENERATED_EXAMPLE = "moving shapes (generated)"
# A job folder's name: its number, zero-padded (sorts by age).
JOB_NAME = re.compile(r"^job-(\d{6})$")


# ----------------------------------------------------------------------------- examples


def write_example_clip(
    path: Path, *, num_frames: int = 24, size: tuple[int, int] = (240, 320), fps: int = 8
) -> Path:
    """An H.264 clip of a red square moving right and a blue disc moving down over grey.

    Args:
        size: ``(H, W)``, both even.
    """
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    side, radius = height // 4, height // 8
    with h264_writer(path, size=size, fps=Fraction(fps), crf=18) as write:
        for t in range(num_frames):
            progress = t / max(num_frames - 1, 1)
            picture = np.full((height, width, 3), 90, dtype=np.uint8)
            left, top = int(progress * (width - side)), height // 2 - side // 2
            picture[top : top + side, left : left + side] = (220, 40, 40)
            center_row = radius + progress * (height - 2 * radius)
            disc = (rows - center_row) ** 2 + (cols - width // 4) ** 2 <= radius**2
            picture[disc] = (40, 80, 220)
            write(picture)
    return path


@dataclass(frozen=True)
class Example:
    """A clip the page offers.

    Attributes:
        label: what the page calls it.
        source: the video file or frame folder a job reads.
        preview: an mp4 of it for the page's video player (``source`` itself for a video).
    """

    label: str
    source: Path
    preview: Path


def prepare_examples(cfg: PipelineConfig, folder: Path) -> list[Example]:
    """The generated clip, then each of ``app.examples`` that exists, with their previews
    (written into ``folder`` once).
    """
    folder.mkdir(parents=True, exist_ok=True)
    generated = folder / "moving_shapes.mp4"
    if not generated.is_file():
        write_example_clip(generated)
    examples = [Example(GENERATED_EXAMPLE, generated, generated)]
    for entry in cfg.app.examples:
        source = Path(entry).expanduser()
        if not source.exists():
            logger.info("example %s not found; not offered", source)
            continue
        try:
            preview = source if source.is_file() else folder_preview(source, folder, cfg)
            seconds = clip_duration(source, folder_fps=cfg.demo.fps)
        except VideoError as err:
            logger.warning("example %s left out: %s", source, err)
            continue
        if source.is_dir():
            label = f"{source.parent.name}/{source.name} ({len(frame_files(source))} frames)"
        else:
            label = source.name if seconds is None else f"{source.name} ({seconds:.1f} s)"
        examples.append(Example(label, source, preview))
    return examples


def folder_preview(source: Path, folder: Path, cfg: PipelineConfig) -> Path:
    """An mp4 of a frame folder at ``demo.fps`` (made once), for the page's player."""
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', source.resolve().as_posix())}.mp4"
    if path.is_file():
        return path
    clip = load_clip(source, frame_step=1, max_frames=None, folder_fps=cfg.demo.fps)
    height, width = clip.size
    with h264_writer(path, size=(height - height % 2, width - width % 2), fps=clip.fps, crf=23) as (
        write
    ):
        for frame in clip.frames:  # read one at a time
            write(np.asarray(frame)[: height - height % 2, : width - width % 2])
    return path


# ----------------------------------------------------------------------------- jobs


def parse_sentences(text: str, max_sentences: int) -> list[str]:
    """The sentences typed in the page, one per line, each as written; blank lines are skipped.

    Raises:
        DemoError: no sentence, or more than ``max_sentences``.
    """
    sentences = [line.rstrip("\r") for line in (text or "").split("\n") if line.strip()]
    if not sentences:
        raise DemoError("no sentence: type one referring sentence per line")
    if len(sentences) > max_sentences:
        raise DemoError(
            f"{len(sentences)} sentences: this app takes at most {max_sentences} at a time "
            "(app.max_sentences)"
        )
    return sentences


@dataclass(frozen=True)
class JobRequest:
    """What the page asks for.

    Attributes:
        source: a video file or a frame folder.
        sentences: the referring sentences, as written.
        frame_step: keep every ``frame_step``-th frame.
        max_frames: stop after this many kept frames.
        sam2: :data:`CONFIGURED_SAM2` or the ``name`` of an ``app.sam2_models`` entry.
        prompt: ``stage2.prompt`` (``mask``, ``box``, ``point``).
        tracker: ``stage2.tracker`` (``sam2``, ``samurai``, ``sam3``); when its weights differ
            from the configured tracker's, the page's configured SAM 2 means its released ones
            (``stage2.released``).
    """

    source: Path
    sentences: list[str]
    frame_step: int
    max_frames: int
    sam2: str
    prompt: str
    tracker: str


@dataclass(frozen=True)
class JobResult:
    """What a job made, in its folder.

    Attributes:
        folder: the job's folder (``overlay.mp4``, ``masks/``, ``summary.json``, ``masks.zip``).
        overlay: the overlay video.
        masks_zip: ``<sentence index>/<frame>.png`` for every sentence and frame, and
            ``summary.json``.
        gallery: ``(PNG, caption)`` of up to ``app.gallery_frames`` mask frames per sentence.
        summary: :func:`~referdino_plus.demo.summarize`'s dict.
    """

    folder: Path
    overlay: Path
    masks_zip: Path
    gallery: list[tuple[Path, str]]
    summary: dict[str, Any]


def decision_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """The page's table (:data:`DECISION_HEADERS`), per sentence: number, text, colour, fused
    output, the fusion rule's count (frames where SAM 2's box is smaller / frames where both
    masks are non-empty), kept queries, and frames with a mask / all frames."""
    return [
        [
            entry["index"] + 1,
            entry["text"],
            entry["color"],
            entry["fused_output"],
            f"{entry['frames_sam2_smaller']}/{entry['frames_both_nonempty']}",
            ", ".join(str(q) for q in entry["kept_queries"]) or "none",
            f"{entry['frames_with_mask']}/{summary['frames']}",
        ]
        for entry in summary["sentences"]
    ]


DECISION_HEADERS = ["#", "sentence", "colour", "output", "SAM 2 smaller", "queries", "masks"]


def zip_masks(job_dir: Path) -> Path:
    """``masks.zip`` of ``job_dir/masks/<index>/<frame>.png`` and ``summary.json``, written
    atomically (PNGs are stored, not compressed again)."""
    path = job_dir / "masks.zip"
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for png in sorted((job_dir / "masks").glob("*/*.png")):
            archive.write(png, png.relative_to(job_dir / "masks").as_posix())
        archive.write(job_dir / "summary.json", "summary.json")
    return path


class App:
    """The server's state: configuration, device, models, examples and results.

    Args:
        cfg: the configuration (``app`` section: the limits; ``stage1``/``stage2``: the models
            loaded at start).
        device: ``cuda:N`` or ``cpu``, already bound.
    """

    def __init__(self, cfg: PipelineConfig, device: str) -> None:
        self.cfg = cfg
        self.device = device
        self.results_dir = Path(cfg.app.results_dir).expanduser().resolve()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.segmenter = Segmenter(device, keep_models=True, out_of_memory_hint=OUT_OF_MEMORY_HINT)
        self.examples = prepare_examples(cfg, self.results_dir / "examples")
        self.startup_problem: str | None = None

    @property
    def sam2_choices(self) -> list[str]:
        """The page's SAM 2 choices: the configured model first, then ``app.sam2_models``."""
        return [CONFIGURED_SAM2, *(choice.name for choice in self.cfg.app.sam2_models)]

    @property
    def prompt_choices(self) -> list[str]:
        return [kind.value for kind in PromptKind]

    @property
    def tracker_choices(self) -> list[str]:
        return [tracker.value for tracker in Tracker]

    def load_models(self) -> None:
        """Load the configured models now; a missing checkpoint is remembered in
        :attr:`startup_problem` (the page shows it) instead of stopping the server."""
        try:
            self.segmenter.load(self.cfg)
        except DemoError as err:
            self.startup_problem = str(err)
            logger.warning("%s", err)

    def job_config(self, request: JobRequest) -> PipelineConfig:
        """The configuration of one job: the page's SAM 2, prompt kind and tracker (SAM 2 sizes go
        with the trackers on SAM 2 weights).

        Raises:
            DemoError: an unknown choice.
        """
        if request.tracker not in self.tracker_choices:
            raise DemoError(f"tracker {request.tracker!r}: expected one of {self.tracker_choices}")
        released = self.cfg.stage2.released
        stage2: dict[str, Any] = {}
        if request.sam2 != CONFIGURED_SAM2:
            choice = next((c for c in self.cfg.app.sam2_models if c.name == request.sam2), None)
            if choice is None:
                raise DemoError(f"SAM 2 {request.sam2!r}: expected one of {self.sam2_choices}")
            if released[request.tracker] != released[str(Tracker.sam2)]:
                raise DemoError(
                    f"SAM 2 {request.sam2!r}: SAM 2 weights do not fit the {request.tracker} "
                    f"tracker; choose {CONFIGURED_SAM2!r}"
                )
            stage2 = {"model": choice.model, "checkpoint": choice.checkpoint}
        elif released[request.tracker] != released[str(self.cfg.stage2.tracker)]:
            # Another tracker family than the configured one: its released weights.
            weights = released[request.tracker]
            stage2 = {"model": weights.model, "checkpoint": weights.checkpoint}
        if request.prompt not in self.prompt_choices:
            raise DemoError(f"prompt {request.prompt!r}: expected one of {self.prompt_choices}")
        return with_stage2(
            self.cfg,
            prompt=PromptKind(request.prompt),
            tracker=Tracker(request.tracker),
            **stage2,
        )

    def check_request(self, request: JobRequest) -> None:
        """Refuse, with one line, what the limits of ``app`` do not allow.

        Raises:
            DemoError: frame step or max frames out of range, or a clip longer than
                ``app.max_clip_seconds``.
        """
        limits = self.cfg.app
        if not 1 <= request.frame_step <= limits.max_frame_step:
            raise DemoError(
                f"frame step {request.frame_step}: expected 1 to {limits.max_frame_step}"
            )
        if not 1 <= request.max_frames <= limits.max_frames:
            raise DemoError(
                f"max frames {request.max_frames}: expected 1 to {limits.max_frames} "
                "(app.max_frames)"
            )
        try:
            seconds = clip_duration(request.source, folder_fps=self.cfg.demo.fps)
        except VideoError as err:
            raise DemoError(self.user_words(err, request.source)) from None
        if seconds is not None and seconds > limits.max_clip_seconds:
            raise DemoError(
                f"the clip lasts {seconds:.1f} s; this app takes clips of at most "
                f"{limits.max_clip_seconds:g} s (app.max_clip_seconds): trim it"
            )

    @staticmethod
    def user_words(err: Exception, source: Path) -> str:
        """``err``'s message naming the uploaded file by its name, not its server path."""
        return str(err).replace(str(source), source.name)

    def new_job_dir(self) -> Path:
        """A new numbered folder under ``results_dir``; older jobs beyond ``app.keep_results``
        are deleted."""
        jobs = sorted(p for p in self.results_dir.iterdir() if JOB_NAME.match(p.name))
        number = int(JOB_NAME.match(jobs[-1].name).group(1)) + 1 if jobs else 1
        for old in jobs[: max(len(jobs) - self.cfg.app.keep_results + 1, 0)]:
            shutil.rmtree(old, ignore_errors=True)
        folder = self.results_dir / f"job-{number:06d}"
        folder.mkdir()
        return folder

    def run(self, request: JobRequest, progress: ProgressCallback | None = None) -> JobResult:
        """One job: check, decode, segment, write the demo's outputs and ``masks.zip``.

        Raises:
            DemoError: anything the user can fix, in one line.
        """
        self.check_request(request)
        cfg = self.job_config(request)
        check_models(cfg)

        def frame_read(done: int, total: int | None) -> None:
            if progress is not None:
                progress(StageProgress(READING, done, total or request.max_frames, "frame"))

        try:
            clip = load_clip(
                request.source,
                frame_step=request.frame_step,
                max_frames=request.max_frames,
                folder_fps=cfg.demo.fps,
                on_frame=frame_read,
            )
        except VideoError as err:
            raise DemoError(self.user_words(err, request.source)) from None
        logger.info(
            "job: %d frame(s) of %s, %d sentence(s), SAM 2 %s, %s prompts, %s tracker",
            len(clip.frames),
            request.source.name,
            len(request.sentences),
            request.sam2,
            request.prompt,
            request.tracker,
        )
        records = self.segmenter.segment(clip, request.sentences, cfg, progress=progress)
        folder = self.new_job_dir()
        write_outputs(
            folder,
            clip,
            request.sentences,
            records.stage3,
            visual=cfg.visualize,
            crf=cfg.demo.crf,
            progress=progress,
        )
        summary = summarize(clip, request.sentences, records, cfg, self.device, request.frame_step)
        write_summary(folder / "summary.json", summary)
        gallery = [
            (
                folder / "masks" / str(index) / f"{clip.frame_names[t]}.png",
                f"{index + 1}: frame {clip.frame_names[t]}",
            )
            for index in range(len(request.sentences))
            for t in evenly_spaced(len(clip.frames), self.cfg.app.gallery_frames)
        ]
        clip.close()  # a video's decoded frames (also deleted if anything above fails)
        return JobResult(folder, folder / "overlay.mp4", zip_masks(folder), gallery, summary)
