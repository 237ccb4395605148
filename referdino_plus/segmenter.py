"""The three stages on a decoded clip, on one device: what ``demo`` and ``app`` both run.

:class:`Segmenter` holds the models (ReferDINO, the tracker) on its device, loads each on first
use and either keeps it for the next clip (the app) or releases it as soon as its stage is done
(the command-line demo, which runs once). Each stage reports its progress to a callback
(:class:`StageProgress`): stage 1 in frames, when a window starts and after each of its sentences,
stage 2 after each frame the tracker propagates, stage 3 once. :class:`TqdmProgress` shows those
as progress bars on a terminal.

Both read clips of any length: :func:`load_demo_config` runs stage 1 in windows of
``demo.window_frames`` (docs/long-videos.md: Windowed stage 1), and the clip's frames are read when needed.

Problems a user can fix (a missing checkpoint, out of memory) raise :class:`DemoError` with a
one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from referdino_plus.config import ConfigError, PipelineConfig, load_config, to_plain
from referdino_plus.runtime import gpu_count, select_devices
from referdino_plus.stages import STAGES
from rvos.intermediates import Stage1Video, Stage2Video, Stage3Video
from rvos.progress import progress_bar
from rvos.video import Clip

logger = logging.getLogger(__name__)

# How PyTorch words out-of-memory errors (CUDA, CPU allocator).
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory")
# Exit codes: bad arguments or configuration; unusable input, missing weights or a failed run.
EXIT_USAGE, EXIT_FAILURE = 2, 1
# The steps a job reports progress for, in order: the stages, by their names.
STAGE1, STAGE2, STAGE3 = (stage.name for stage in STAGES)
# demo and app run stage 1 in windows of demo.window_frames; a stage1.window.frames=... the user
# gives comes later and wins.
DEMO_WINDOW = "stage1.window.frames=${demo.window_frames}"
Model = TypeVar("Model")


class DemoError(Exception):
    """A problem the user can fix; the message is one line, ``exit_code`` the process status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class StageProgress:
    """How far one step of a job is.

    Attributes:
        step: which step (:data:`STAGE1`, :data:`STAGE2`, :data:`STAGE3`, or the caller's own,
            e.g. writing the outputs).
        done: units done, fractional while a unit is under way (stage 2: a sentence's frames).
        total: units of the step.
        unit: what a unit is (``sentence``, ``frame``).
        detail: where it is, for people (``sentence 2/3, frame 14/40``).
    """

    step: str
    done: float
    total: int
    unit: str
    detail: str = ""

    @property
    def fraction(self) -> float:
        """``done / total`` in ``[0, 1]``."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 1.0


ProgressCallback = Callable[[StageProgress], None]


class TqdmProgress:
    """A :data:`ProgressCallback` drawing one tqdm bar per step (use as a context manager).

    The bar counts whole units (``1/2 sentence``); where the unit under way is, is its postfix
    (``sentence 2/2, frame 14/40``).
    """

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._step = ""

    def __call__(self, progress: StageProgress) -> None:
        if self._bar is None or progress.step != self._step:
            self.close()
            self._step = progress.step
            self._bar = progress_bar(
                total=progress.total, desc=progress.step, unit=progress.unit, dynamic_ncols=True
            )
        if progress.detail:
            self._bar.set_postfix_str(progress.detail, refresh=False)
        whole = math.floor(progress.done)
        if whole != self._bar.n:
            self._bar.update(whole - self._bar.n)
        self._bar.refresh()  # the postfix moves on within a unit too (one report per frame)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Segmentation:
    """A clip's records of the three stages, one expression per sentence (``exp_id`` = its
    index as a string); see :mod:`rvos.intermediates`."""

    stage1: Stage1Video
    stage2: Stage2Video
    stage3: Stage3Video


def load_demo_config(overrides: Sequence[str]) -> PipelineConfig:
    """The configuration of ``demo`` and ``app``: the pipeline's, with stage 1 in windows of
    ``demo.window_frames`` unless ``overrides`` set ``stage1.window.frames``.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range.
    """
    return load_config([DEMO_WINDOW, *overrides])


def demo_config_and_device(
    overrides: Sequence[str], gid: int | None, cpu: bool
) -> tuple[PipelineConfig, str]:
    """The configuration of ``demo`` and ``app`` (:func:`load_demo_config`) and their one device
    (``--gid N``, ``--cpu``; neither: GPU 0 if there is one, else the CPU).

    Raises:
        DemoError: a bad configuration or device (exit status :data:`EXIT_USAGE`).
    """
    try:
        cfg = load_demo_config(overrides)
        gids = None if gid is None else [gid]
        (device,) = select_devices(gids, cpu, available=0 if cpu else gpu_count())
    except (ConfigError, ValueError) as err:
        raise DemoError(str(err), EXIT_USAGE) from None
    return cfg, device


def check_models(cfg: PipelineConfig) -> None:
    """Fail before any decoding when a model file is missing or unusable (as a pipeline run's
    preflight does).

    Raises:
        DemoError: one line naming every problem (a missing checkpoint names
            ``download_ckpts.sh``).
    """
    from referdino_plus.preflight import model_problems

    problems = model_problems(cfg, stages=(1, 2))
    if problems:
        raise DemoError("; ".join(problems))


def build_model(step: str, factory: Callable[[], Model]) -> Model:
    """``factory()``; a missing or mismatched file becomes a one-line error.

    Raises:
        DemoError: naming the stage and what is wrong (a missing checkpoint names
            ``download_ckpts.sh``).
    """
    try:
        return factory()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise DemoError(f"{step}: cannot load the model: {' '.join(str(err).split())}") from None


@contextlib.contextmanager
def explain_out_of_memory(device: str, hint: str) -> Iterator[None]:
    """Turn an out-of-memory error into a :class:`DemoError` that says what to reduce
    (``hint``: how to use fewer frames or another device, in the caller's words)."""
    import torch

    try:
        yield
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        message = str(err).lower()
        if not isinstance(err, torch.cuda.OutOfMemoryError) and not any(
            marker in message for marker in OUT_OF_MEMORY_MARKERS
        ):
            raise
        raise DemoError(f"out of memory on {device}: {hint}") from None


def stage1_model_key(cfg: PipelineConfig) -> Hashable:
    """What decides which ReferDINO :func:`build_stage1_model` builds."""
    options = cfg.stage1
    return (options.model, options.checkpoint, options.text_encoder, str(options.autocast))


def tracker_key(cfg: PipelineConfig) -> Hashable:
    """What decides the tracker ``build_tracker`` builds: every ``stage2`` option but the
    refiner's own (which only change how the refiner uses the tracker)."""
    from stage2_sam2_refine.refine import Refiner

    options = to_plain(cfg.stage2)
    return json.dumps(
        {key: value for key, value in options.items() if key not in Refiner.OPTION_FIELDS},
        sort_keys=True,
    )


class Segmenter:
    """Stages 1-3 on a clip for each of its sentences, with the pipeline's per-stage functions.

    Holds at most one ReferDINO and one tracker on ``device``: a model is built on first use and
    rebuilt only when a configuration asks for another one (another checkpoint, SAM 2 size or
    tracker). One clip is segmented at a time (a lock guards the models).

    Args:
        device: ``cuda:N`` or ``cpu``; the caller binds the process to it.
        keep_models: keep the models loaded between clips (the app); ``False`` releases each
            model once its stage is done, before the next one loads (the command line).
        out_of_memory_hint: what an out-of-memory message tells the user to change.
    """

    def __init__(self, device: str, *, keep_models: bool, out_of_memory_hint: str) -> None:
        self.device = device
        self.keep_models = keep_models
        self.out_of_memory_hint = out_of_memory_hint
        self._models: dict[str, tuple[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def _model(self, slot: str, key: Hashable, factory: Callable[[], Model]) -> Model:
        """The model in ``slot`` if it was built for ``key``, else a newly built one."""
        held = self._models.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        self._release(slot)
        logger.info("loading %s on %s", slot, self.device)
        model = build_model(slot, factory)
        if self.keep_models:
            self._models[slot] = (key, model)
        return model

    def _release(self, slot: str) -> None:
        """Drop the model in ``slot`` (if any) and return freed CUDA memory to the device."""
        self._models.pop(slot, None)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _current_device(self) -> contextlib.AbstractContextManager:
        """Make :attr:`device` the calling thread's current CUDA device (no-op on the CPU)."""
        if not self.device.startswith("cuda"):
            return contextlib.nullcontext()
        import torch

        return torch.cuda.device(torch.device(self.device))

    def stage1_model(self, cfg: PipelineConfig) -> Any:
        """ReferDINO as ``cfg.stage1`` configures it, built once."""
        from stage1_referdino.runner import build_stage1_model

        return self._model(
            STAGE1, stage1_model_key(cfg), lambda: build_stage1_model(cfg.stage1, self.device)
        )

    def refiner(self, cfg: PipelineConfig) -> Any:
        """A :class:`~stage2_sam2_refine.refine.Refiner` with ``cfg.stage2``'s options around
        the tracker they configure, built once."""
        from stage2_sam2_refine.refine import Refiner
        from stage2_sam2_refine.tracker import build_tracker

        tracker = self._model(
            STAGE2, tracker_key(cfg), lambda: build_tracker(cfg.stage2, device=self.device)
        )
        return Refiner(tracker, cfg.stage2)

    def load(self, cfg: PipelineConfig) -> None:
        """Build both models now (the app does, before its first job).

        Raises:
            DemoError: a missing checkpoint or a model that cannot be loaded.
        """
        check_models(cfg)
        with self._lock, self._current_device():
            self.stage1_model(cfg)
            self.refiner(cfg)

    def segment(
        self,
        clip: Clip,
        sentences: Sequence[str],
        cfg: PipelineConfig,
        *,
        progress: ProgressCallback | None = None,
    ) -> Segmentation:
        """Stages 1-3 on ``clip`` for each sentence (``exp_id`` = its index as a string).

        Args:
            clip: the frames (stage 1 reads a window at a time, the tracker a frame at a time).
            sentences: as written (ReferDINO tokenizes the raw text).
            cfg: ``stage1``/``stage2`` choose the models and their options, ``stage3`` the
                fusion rule.
            progress: told in frames when a stage-1 window starts and after each of its
                sentences, after each propagated frame (stage 2) and at the end of stage 3.
        Raises:
            DemoError: a model that cannot be loaded, or out of memory.
        """
        from stage1_referdino.runner import Stage1Progress, stage1_record, warn_dropped_tokens
        from stage2_sam2_refine.runner import stage2_record
        from stage3_fusion.runner import fuse_video

        report = progress or (lambda _: None)
        count = len(sentences)
        expressions = {str(index): text for index, text in enumerate(sentences)}
        # The app calls from a server thread, whose current CUDA device is not bound.
        with self._lock, self._current_device():
            num_frames = len(clip.frames)
            report(StageProgress(STAGE1, 0, num_frames, "frame", "loading the model"))
            model = self.stage1_model(cfg)
            warn_dropped_tokens(model, expressions, lambda exp_id: f"sentence {int(exp_id) + 1}")

            def stage1_done(update: Stage1Progress) -> None:
                report(
                    StageProgress(
                        STAGE1, update.frames_done, num_frames, "frame", stage1_detail(update)
                    )
                )

            with explain_out_of_memory(self.device, self.out_of_memory_hint):
                stage1 = stage1_record(
                    model,
                    clip.frames,
                    expressions,
                    cfg.stage1,
                    video_id=clip.name,
                    frame_names=list(clip.frame_names),
                    on_progress=stage1_done,
                )
            del model
            if not self.keep_models:
                self._release(STAGE1)

            report(StageProgress(STAGE2, 0, count, "sentence", "loading the model"))
            refiner = self.refiner(cfg)

            def frame_done(exp_id: str, done: int, total: int) -> None:
                index = int(exp_id)
                report(
                    StageProgress(
                        STAGE2,
                        index + done / total,
                        count,
                        "sentence",
                        f"sentence {index + 1}/{count}, frame {done}/{total}",
                    )
                )

            with explain_out_of_memory(self.device, self.out_of_memory_hint):
                stage2 = stage2_record(refiner, stage1, clip.frames, on_frame=frame_done)
            report(StageProgress(STAGE2, count, count, "sentence", "done"))
            del refiner
            if not self.keep_models:
                self._release(STAGE2)

            stage3 = fuse_video(stage2, cfg.stage3)
            report(StageProgress(STAGE3, count, count, "sentence", "done"))
        return Segmentation(stage1, stage2, stage3)


def stage1_detail(update: Any) -> str:
    """Where stage 1 is, for people: ``sentence 2/3`` in one pass; ``window 2/5 (frames
    61-132), sentence 2/3`` in windows (``update``: a
    :class:`~stage1_referdino.runner.Stage1Progress`)."""
    count = update.num_expressions
    if update.expressions_done == 0:
        sentence = f"encoding {update.window.num_frames} frames"
    else:
        sentence = f"sentence {update.expressions_done}/{count}"
    if update.num_windows == 1:
        return sentence
    window = update.window
    return (
        f"window {update.window_index + 1}/{update.num_windows} "
        f"(frames {window.start + 1}-{window.stop}), {sentence}"
    )


def with_stage2(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    """``cfg`` with some ``stage2`` options replaced (``cfg`` is left as it was)."""
    return dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, **changes))
