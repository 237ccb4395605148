"""SAM 3's tracker as a stage-2 tracker (``stage2.tracker=sam3``), through ``transformers``.

SAM 3 (arXiv 2511.16719) is a detector and a SAM 2-style memory tracker on one vision backbone;
``transformers``' :class:`~transformers.Sam3TrackerVideoModel` is its tracker, prompted with
masks, boxes or clicks. This module puts it behind :mod:`stage2_sam2_refine.tracker`'s interface
with transformers' public video API:

- :meth:`Sam3Tracker.open_video`: ``Sam3TrackerVideoProcessor.init_video_session`` makes the
  session; its frames (``session.processed_frames``) are a :class:`LazyFrames`, which decodes,
  resizes and normalises a frame with the processor when the vision encoder needs it, and holds
  none;
- :meth:`Sam3Session.track`, per expression: ``reset_tracking_data`` forgets the previous
  expression's prompts and memories (and keeps frames and features), each prompt is added with
  ``add_inputs_to_inference_session`` and its frame run at once (``model(inference_session,
  frame_idx)``), then ``propagate_in_video_iterator`` runs forward from the earliest prompted
  frame and in reverse from it; ``post_process_masks`` upsamples each frame's mask logits to the
  frame size and keeps ``> 0``. After each step, the tracked outputs that SAM 3's memory can no
  longer read (:func:`memory_reach` frames back; prompted frames are kept, and what the reverse
  pass reads of the forward pass) are dropped from the session
  (:meth:`Sam3Session.drop_unreachable_outputs`), so a pass holds a bounded number of them.

The vision backbone runs once per frame per video, for every expression and both directions: the
session's vision-feature cache (``session.cache``, a plain attribute) is replaced by a
:class:`VideoFeatureCache`, which keeps the ``stage2.feature_cache_frames`` most recently used
frames on ``stage2.feature_cache_device`` (a frame dropped from it is decoded and encoded again
when needed: the same features). The tracking itself is transformers' code, unchanged, and the
masks are bit-identical to its own propagation on a fresh session (tested).

Weights: a transformers folder (``config.json``, ``*.safetensors``, the processor's
``processor_config.json``), a hub reference to one (``hf://facebook/sam3/``, gated: fetched into
the Hugging Face cache and checked by :mod:`rvos.weights`), or a hub id (``facebook/sam3``, read
by transformers); :func:`checkpoint_problem` says in one line what is wrong with any of them
before anything loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from rvos.checkpoints import CheckpointError
from rvos.options import CacheDevice, autocast_to_dtype
from rvos.weights import WeightsError, is_hub_reference, resolve_weights
from stage2_sam2_refine.options import Stage2Options
from stage2_sam2_refine.tracker import (
    Frame,
    ObjectPrompt,
    TrackedFrame,
    check_frame_headers,
    frame_name,
    propagation_order,
)

if TYPE_CHECKING:
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )

logger = logging.getLogger(__name__)

# stage2.model values of SAM 3's tracker (its size comes with the checkpoint's config.json).
MODEL_NAMES = ("sam3",)
# config.json model types whose weights hold SAM 3's tracker: the tracker alone, or SAM 3's video
# model (detector and tracker, as facebook/sam3), whose tracker part transformers loads.
MODEL_TYPES = ("sam3_tracker_video", "sam3_video")
# Files a processor saved by transformers may come as (one is enough).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# What a hub folder reference (hf://<owner>/<repo>/) fetches: the config and the safetensors
# weights, with the processor's and tokenizer's small files (not the original .pt checkpoint).
HUB_FOLDER_FILES = ("config.json", "*.safetensors")
HUB_FOLDER_EXTRAS = ("*.json", "*.txt")
RELEASED_REPO = "facebook/sam3"
ACCESS_HINT = (
    f"request access on https://huggingface.co/{RELEASED_REPO}, run `hf auth login`, or point "
    "stage2.checkpoint= at a local folder (docs/trackers.md: SAM 3)"
)
FOLDER_HINT = (
    "expected SAM 3's transformers folder (config.json, *.safetensors, processor_config.json, "
    f"e.g. a download of {RELEASED_REPO}) or a hub id"
)


# --------------------------------------------------------------------------------------------------
# Checks and loading
# --------------------------------------------------------------------------------------------------


def checkpoint_problem(options: Stage2Options) -> str | None:
    """Why ``stage2.model``/``stage2.checkpoint`` cannot be SAM 3's tracker, in one line, or
    ``None``; nothing is built (a hub id costs one small download: its ``config.json``).

    Refused: a model name other than :data:`MODEL_NAMES`; a file (e.g. a SAM 2 ``.pt``); a folder
    without ``config.json``, weights or processor, or whose ``config.json`` is another model; a hub
    id that does not exist, is gated without access, or is neither cached nor reachable.
    """
    if options.model not in MODEL_NAMES:
        return (
            f"stage2.model={options.model}: SAM 3's tracker (stage2.tracker=sam3) takes "
            f"stage2.model={MODEL_NAMES[0]} (its size comes with stage2.checkpoint's config.json)"
        )
    problem = _transformers_problem()
    if problem:
        return problem
    source = options.checkpoint
    where = f"stage2.checkpoint={source}"
    if is_hub_reference(source):
        try:
            return _folder_problem(hub_folder(source), where)
        except WeightsError as err:
            return f"stage2.checkpoint={err}"
    path = Path(source).expanduser()
    if path.is_file():
        return (
            f"{where}: a file, not SAM 3's weights; {FOLDER_HINT} (SAM 2 checkpoints go with "
            "stage2.tracker=sam2 or samurai)"
        )
    if path.is_dir():
        return _folder_problem(path, where)
    config, problem = _hub_config(source, where)
    if problem:
        return problem
    return _model_type_problem(config, where)


def model_problems(options: Stage2Options, *, hint: str = "") -> list[str]:
    """:func:`checkpoint_problem` as a list, for the preflight's table of trackers (``hint``, how to
    get SAM 2's files, does not apply: SAM 3's lines say how to get its weights)."""
    problem = checkpoint_problem(options)
    return [problem] if problem else []


def _transformers_problem() -> str | None:
    try:
        from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor  # noqa: F401
    except ImportError:
        import transformers

        return (
            f"transformers {transformers.__version__} has no SAM 3 tracker "
            "(Sam3TrackerVideoModel: transformers 5 or newer); "
            "`pip install -c constraints.txt transformers`"
        )
    return None


def hub_folder(reference: str) -> Path:
    """The local folder of a hub reference to SAM 3's weights (``hf://facebook/sam3/``),
    fetched and checked (:func:`rvos.weights.resolve_weights`).

    Raises:
        WeightsError: one line (offline and not cached, gated, checksum, unknown).
    """
    return resolve_weights(
        reference, folder_files=HUB_FOLDER_FILES, optional_files=HUB_FOLDER_EXTRAS
    )


def _folder_problem(folder: Path, where: str) -> str | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return f"{where}: no config.json in the folder; {FOLDER_HINT}"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        return f"{where}: unreadable config.json ({type(err).__name__}); {FOLDER_HINT}"
    problem = _model_type_problem(config, where)
    if problem:
        return problem
    if not any(folder.glob("*.safetensors")):
        return f"{where}: no *.safetensors weights in the folder; {FOLDER_HINT}"
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        return (
            f"{where}: no processor_config.json in the folder (save it with "
            f"Sam3TrackerVideoProcessor.from_pretrained('{RELEASED_REPO}').save_pretrained(folder)"
            f"); {FOLDER_HINT}"
        )
    return None


def _model_type_problem(config: Any, where: str) -> str | None:
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in MODEL_TYPES:
        return None
    return (
        f"{where}: config.json describes a {model_type or 'model of unknown type'!s} model, not "
        f"SAM 3's tracker (model_type {' or '.join(MODEL_TYPES)}); {FOLDER_HINT}"
    )


def _hub_config(repo_id: str, where: str) -> tuple[dict[str, Any], str | None]:
    """The hub repository's ``config.json`` (from the local cache when ``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return {}, f"{where}: no such folder, and not a hub id; {FOLDER_HINT}"
    try:
        config_path = hf_hub_download(repo_id, "config.json")
    except GatedRepoError:  # before RepositoryNotFoundError: it is one
        return {}, f"{where}: a gated hub repository this account has no access to; {ACCESS_HINT}"
    except RepositoryNotFoundError:
        return {}, (
            f"{where}: no such folder, and no hub repository of that name that this account can "
            f"see; {FOLDER_HINT}"
        )
    except LocalEntryNotFoundError:
        return {}, (
            f"{where}: no such folder, and the hub id is not in the local Hugging Face cache while "
            "the hub cannot be reached (or HF_HUB_OFFLINE=1); download it once online, or "
            f"{ACCESS_HINT}"
        )
    except OSError as err:  # the hub answered something else (e.g. no config.json)
        return {}, f"{where}: cannot read the hub repository's config.json ({err}); {FOLDER_HINT}"
    try:
        return json.loads(Path(config_path).read_text()), None
    except (OSError, ValueError) as err:
        return {}, f"{where}: unreadable config.json ({type(err).__name__}); {FOLDER_HINT}"


def load_sam3(source: str) -> tuple[Sam3TrackerVideoModel, Sam3TrackerVideoProcessor]:
    """SAM 3's tracker and its processor from a folder, a hub reference (``hf://.../``) or a hub
    id, on the CPU, in eval mode.

    Raises:
        CheckpointError: weights of the tracker missing from the checkpoint (transformers would
            initialise them at random).
    """
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    if is_hub_reference(source):
        source = str(hub_folder(source))
    model, info = Sam3TrackerVideoModel.from_pretrained(source, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        raise CheckpointError(
            f"stage2.checkpoint={source}: {len(missing)} weight(s) of SAM 3's tracker missing from "
            f"the checkpoint (e.g. {', '.join(missing[:3])}); {FOLDER_HINT}"
        )
    processor = Sam3TrackerVideoProcessor.from_pretrained(source)
    logger.info("loaded SAM 3's tracker from %s", source)
    return model.eval(), processor


def build(options: Stage2Options, *, device: str | torch.device = "cpu") -> Sam3Tracker:
    """SAM 3's tracker as ``options`` configure it, on ``device`` (the :data:`TRACKERS` entry).

    Raises:
        CheckpointError: :func:`checkpoint_problem`'s line, before anything loads; or a checkpoint
            that lacks tracker weights.
    """
    problem = checkpoint_problem(options)
    if problem:
        raise CheckpointError(problem)
    model, processor = load_sam3(options.checkpoint)
    return Sam3Tracker(model.to(device), processor, options)


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


class VideoFeatureCache:
    """The vision features of a video's most recently used frames, kept for all its expressions
    (in place of transformers' session cache, ``session.cache``).

    transformers' session reads and fills it through ``get_vision_features`` and
    ``cache_vision_features`` (and empties it with ``clear_all``); its own cache keeps the last
    ``max_vision_features_cache_size`` frames by index, with the tracking state, and copies the
    frame-independent positional encodings (about 110 MB at SAM 3's 1008 px) per frame whenever
    it is not on the model's device. This one keeps features on ``feature_device``, drops the
    least recently used frame beyond ``max_frames`` (transformers computes it again when asked:
    the same features), and keeps one copy of the positional encodings, on the model's device.

    Args:
        inference_device: where the model runs.
        feature_device: where features wait between uses.
        max_frames: most frames kept; None: every frame.
    """

    def __init__(
        self,
        *,
        inference_device: torch.device,
        feature_device: torch.device,
        max_frames: int | None,
    ) -> None:
        self.inference_device = inference_device
        self.feature_device = feature_device
        self.max_frames = max_frames
        # frame_idx -> vision_feats (one [H_l * W_l, 1, C_l] tensor per level), least recent first
        self.features: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self.position_encodings: list[torch.Tensor] | None = None

    def cache_vision_features(self, frame_idx: int, features: dict) -> None:
        """Keep one frame's ``vision_feats`` (and, once, the ``vision_pos_embeds``)."""
        if self.position_encodings is None:
            self.position_encodings = [
                p.to(self.inference_device) for p in features["vision_pos_embeds"]
            ]
        self.features[frame_idx] = [
            f.to(self.feature_device, non_blocking=True) for f in features["vision_feats"]
        ]
        self.features.move_to_end(frame_idx)
        while self.max_frames is not None and len(self.features) > self.max_frames:
            self.features.popitem(last=False)

    def get_vision_features(self, frame_idx: int) -> dict | None:
        """One frame's features on the model's device, or None; it becomes the most recent."""
        cached = self.features.get(frame_idx)
        if cached is None:
            return None
        self.features.move_to_end(frame_idx)
        return {
            "vision_feats": [f.to(self.inference_device, non_blocking=True) for f in cached],
            "vision_pos_embeds": self.position_encodings,
        }

    def clear_all(self) -> None:
        self.features.clear()


def _rgb_frame(frame: Frame, *, video_id: str, index: int) -> Image.Image:
    """One frame decoded to RGB.

    Raises:
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    try:
        with Image.open(frame) as img:
            return img.convert("RGB")
    except OSError as err:
        raise OSError(f"video {video_id!r}: cannot read frame {os.fspath(frame)}: {err}") from err


def _check_size(video_id: str, frame: Frame, index: int, image: Image.Image, first: tuple):
    """Raise ``ValueError`` naming the video and the frame unless ``image`` is ``first``'s
    ``(W, H)``."""
    if image.size != first:
        raise ValueError(
            f"video {video_id!r}: frame {frame_name(frame, index)} is {image.width}x"
            f"{image.height}, the first frame is {first[0]}x{first[1]}"
        )


def load_rgb_frames(frames: Sequence[Frame], *, video_id: str) -> list[Image.Image]:
    """The frames decoded to RGB, all of one size, all at once (:class:`LazyFrames` decodes one
    at a time).

    Raises:
        ValueError: no frames, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if len(frames) == 0:
        raise ValueError(f"video {video_id!r}: no frames to load")
    images: list[Image.Image] = []
    for index in range(len(frames)):
        frame = frames[index]
        image = _rgb_frame(frame, video_id=video_id, index=index)
        if images:
            _check_size(video_id, frame, index, image, images[0].size)
        images.append(image)
    return images


class LazyFrames(Mapping):
    """A video's frames as transformers' session reads them (``processed_frames``: ``len()`` and
    ``[frame_idx]``), each decoded and processed by SAM 3's video processor when asked for and
    not kept: the session asks for a frame only to run the vision encoder on it, which
    :class:`VideoFeatureCache` spares for the frames it holds.

    A frame processed alone is bit-identical to the same frame processed with the whole video
    (the processor resizes and normalises frame by frame; tested).

    Args:
        frames: the frames in order (only ``len()`` and indexing are used).
        processor: SAM 3's processor.
        video_id: named in errors.
        size: ``(W, H)`` every frame must have (the first frame's).
        processing_device: where the processor works.
        storage_device: where a processed frame is handed over (as the session stores frames).
        dtype: the session's dtype.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        processor: Sam3TrackerVideoProcessor,
        *,
        video_id: str,
        size: tuple[int, int],
        processing_device: torch.device,
        storage_device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.frames = frames
        self.processor = processor
        self.video_id = video_id
        self.size = size
        self.processing_device = processing_device
        self.storage_device = storage_device
        self.dtype = dtype
        self.decoded_frames = 0  # frames processed so far (a frame encoded again is again)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))

    def __contains__(self, frame_idx: object) -> bool:
        return isinstance(frame_idx, int) and 0 <= frame_idx < len(self)

    def __getitem__(self, frame_idx: int) -> torch.Tensor:
        """``[3, S, S]`` frame ``frame_idx`` as transformers' processor makes it.

        Raises:
            KeyError: no such frame.
            OSError: the frame cannot be read; ValueError: it is not of the first frame's size.
        """
        if frame_idx not in self:
            raise KeyError(frame_idx)
        frame = self.frames[frame_idx]
        image = _rgb_frame(frame, video_id=self.video_id, index=frame_idx)
        _check_size(self.video_id, frame, frame_idx, image, self.size)
        processed = self.processor.video_processor(
            videos=[image], device=self.processing_device, return_tensors="pt"
        )
        self.decoded_frames += 1
        return processed.pixel_values_videos[0][0].to(self.storage_device, dtype=self.dtype)


def video_size(frames: Sequence[Frame], *, video_id: str) -> tuple[int, int]:
    """``(W, H)`` of the video, checked up front where that is cheap
    (:func:`~stage2_sam2_refine.tracker.check_frame_headers`; :class:`LazyFrames` checks each
    other frame when it decodes it).

    Raises:
        ValueError: no frames, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    height, width = check_frame_headers(frames, video_id=video_id)
    return width, height


def memory_reach(model: Sam3TrackerVideoModel) -> int:
    """How far back SAM 3's memory attention reads tracked (non-conditioning) outputs, in frames
    from the frame being tracked, in the direction of the pass (transformers'
    ``_gather_memory_frame_outputs``: the ``num_maskmem - 1`` previous frames;
    ``_get_object_pointers``: pointers of up to ``max_object_pointers_in_encoder - 1`` previous
    frames); 0 without memory (``num_maskmem = 0``). Prompted frames are read wherever they are."""
    if model.num_maskmem == 0:
        return 0
    return max(model.num_maskmem - 1, model.config.max_object_pointers_in_encoder - 1)


class Sam3Tracker:
    """SAM 3's tracker, loaded once per worker (:class:`~stage2_sam2_refine.tracker.VideoTracker`).

    Args:
        model: transformers' tracker, in eval mode, on its device.
        processor: its processor (frames, prompts, masks).
        options: the ``stage2`` options (precision and memory placement are read here).
    """

    def __init__(
        self,
        model: Sam3TrackerVideoModel,
        processor: Sam3TrackerVideoProcessor,
        options: Stage2Options,
    ) -> None:
        self.model = model
        self.processor = processor
        self.options = options

    @property
    def device(self) -> torch.device:
        return self.model.device

    def precision(self) -> contextlib.AbstractContextManager:
        """CUDA autocast at ``stage2.autocast``; float32 otherwise (and always on the CPU)."""
        if self.device.type != "cuda" or self.options.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=autocast_to_dtype(self.options.autocast))

    def open_video(
        self, frames: Sequence[Frame], *, video_id: str, offload: bool = False
    ) -> Sam3Session:
        """Open a video for all of its expressions; its frames are decoded and processed when
        the vision encoder needs them (:class:`LazyFrames`), its features kept for the
        ``stage2.feature_cache_frames`` most recently used frames (:class:`VideoFeatureCache`).

        Args:
            frames: the video's frames in order (image paths or PIL images; only ``len()`` and
                indexing are used; here only sizes are read: see :func:`video_size`).
            video_id: named in log and error messages.
            offload: frames, tracking state and features in host memory, whatever the options
                say (``stage2.offload_video_to_cpu``, ``offload_state_to_cpu``,
                ``feature_cache_device``).
        """
        options, device, cpu = self.options, self.device, torch.device("cpu")
        width, height = video_size(frames, video_id=video_id)
        on_cpu = offload or options.offload_video_to_cpu
        features_on_cpu = offload or options.feature_cache_device == CacheDevice.cpu
        session = self.processor.init_video_session(
            video=None,  # given below, frame by frame
            inference_device=device,
            inference_state_device=cpu if offload or options.offload_state_to_cpu else device,
            processing_device=cpu if on_cpu else device,
            video_storage_device=cpu if on_cpu else device,
            dtype=torch.float32,  # the weights' (CUDA mixed precision is autocast's)
        )
        # Replaced, not configured: the session would keep every processed frame
        # (``processed_frames``, read with len() and [frame_idx] only), and its own cache sits with
        # the tracking state and copies the frame-independent positional encodings per frame.
        session.processed_frames = LazyFrames(
            frames,
            self.processor,
            video_id=video_id,
            size=(width, height),
            processing_device=cpu if on_cpu else device,
            storage_device=cpu if on_cpu else device,
            dtype=torch.float32,
        )
        session.video_height, session.video_width = height, width
        session.cache = VideoFeatureCache(
            inference_device=device,
            feature_device=cpu if features_on_cpu else device,
            max_frames=options.feature_cache_frames,
        )
        return Sam3Session(self, session, video_id=video_id)


class Sam3Session:
    """One video opened by :class:`Sam3Tracker` (a
    :class:`~stage2_sam2_refine.tracker.TrackingSession`); one expression tracks at a time.

    Attributes:
        video_id: named in log and error messages.
        inference_session: transformers' session: the frames, the feature cache and the current
            expression's prompts and memories.
    """

    def __init__(
        self,
        tracker: Sam3Tracker,
        inference_session: Sam3TrackerVideoInferenceSession,
        *,
        video_id: str,
    ) -> None:
        self.tracker = tracker
        self.inference_session = inference_session
        self.video_id = video_id

    @property
    def num_frames(self) -> int:
        return int(self.inference_session.num_frames)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original frames."""
        session = self.inference_session
        return int(session.video_height), int(session.video_width)

    def track(self, prompts: Sequence[ObjectPrompt]) -> Iterator[TrackedFrame]:
        """Track the prompted objects over the video, in
        :func:`~stage2_sam2_refine.tracker.propagation_order`.

        Args:
            prompts: one per object (``obj_id`` unique), on any frames.
        Yields:
            every frame of both passes: ``masks [K, H, W] bool`` (logits upsampled to the frame
            size, ``> 0``) and ``scores [K] float32`` object-presence logits, objects in prompt
            order.
        Raises:
            ValueError: no prompt, a repeated ``obj_id``, a frame outside the video, or a prompt
                whose shape does not fit the frame.
        """
        prompts = list(prompts)
        order = propagation_order(self.num_frames, [p.frame_idx for p in prompts])
        self._check(prompts)
        tracker, session = self.tracker, self.inference_session
        model = tracker.model
        session.reset_tracking_data()
        for prompt in prompts:
            with tracker.precision():
                self._add_prompt(prompt)
                model(inference_session=session, frame_idx=prompt.frame_idx)
        first, steps = order[0][0], iter(order)
        for reverse in (False, True) if first > 0 else (False,):
            outputs = model.propagate_in_video_iterator(
                session, start_frame_idx=first, reverse=reverse
            )
            while True:
                with tracker.precision():
                    output = next(outputs, None)
                    if output is None:
                        break
                    frame = self._tracked_frame(output, reverse=reverse, prompts=prompts)
                expected = next(steps, None)
                if (frame.frame_idx, reverse) != expected:
                    raise RuntimeError(
                        f"video {self.video_id!r}: SAM 3 propagated frame {frame.frame_idx} "
                        f"(reverse={reverse}) where {expected} was due"
                    )
                self.drop_unreachable_outputs(
                    frame_idx=frame.frame_idx,
                    reverse=reverse,
                    reverse_from=first if not reverse and first > 0 else None,
                )
                yield frame
        if next(steps, None) is not None:
            raise RuntimeError(f"video {self.video_id!r}: SAM 3's propagation stopped early")

    def drop_unreachable_outputs(
        self, *, frame_idx: int, reverse: bool, reverse_from: int | None
    ) -> int:
        """After the step on ``frame_idx`` of a pass, drop every object's tracked outputs
        (``output_dict_per_obj[obj_idx]["non_cond_frame_outputs"]``: memory features, masks at
        the model's input size, pointer, score) that no later step can read, so that a pass holds
        a bounded number of them whatever the length of the video.

        Later steps of the pass read at most :func:`memory_reach` frames back from the frame
        they track, so only the outputs at most ``reach - 1`` frames behind ``frame_idx`` (in the
        direction of the pass) are kept; frames ahead of it are left alone (the pass writes them
        before it reads them), as are prompted frames. A forward pass followed by a reverse pass
        from ``reverse_from`` (``f0``) also keeps the outputs that pass's first step reads,
        ``f0 + 1`` to ``f0 + reach``.

        Returns:
            how many outputs were dropped (all objects together).
        """
        reach = memory_reach(self.tracker.model)
        sign = -1 if reverse else 1
        dropped = 0
        for obj_output_dict in self.inference_session.output_dict_per_obj.values():
            outputs = obj_output_dict["non_cond_frame_outputs"]
            for t in list(outputs):
                behind = (frame_idx - t) * sign
                read_later = behind < reach or (
                    reverse_from is not None and reverse_from < t <= reverse_from + reach
                )
                if behind >= 0 and not read_later:
                    del outputs[t]
                    dropped += 1
        return dropped

    def _check(self, prompts: list[ObjectPrompt]) -> None:
        where = f"video {self.video_id!r}"
        ids = [p.obj_id for p in prompts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: one prompt per object, got object ids {ids}")
        height, width = self.size
        for prompt in prompts:
            if prompt.mask is not None and np.shape(prompt.mask) != (height, width):
                raise ValueError(
                    f"{where}: object {prompt.obj_id}'s mask is {np.shape(prompt.mask)}, the "
                    f"frames are {(height, width)}"
                )
            if prompt.box is not None and np.shape(prompt.box) != (4,):
                raise ValueError(f"{where}: object {prompt.obj_id}'s box is not 4 numbers")
            if prompt.points is not None and (
                np.ndim(prompt.points) != 2
                or np.shape(prompt.points)[1] != 2
                or np.shape(prompt.labels) != (len(prompt.points),)
            ):
                raise ValueError(
                    f"{where}: object {prompt.obj_id}'s points must be [P, 2] with [P] labels"
                )

    def _add_prompt(self, prompt: ObjectPrompt) -> None:
        """Give object ``prompt.obj_id`` its prompt (pixel coordinates of the original frame)."""
        inputs: dict[str, Any]
        if prompt.mask is not None:
            inputs = {"input_masks": np.asarray(prompt.mask, dtype=bool)}
        elif prompt.box is not None:
            inputs = {"input_boxes": [[np.asarray(prompt.box, dtype=np.float32).tolist()]]}
        else:
            inputs = {
                "input_points": [[np.asarray(prompt.points, dtype=np.float32).tolist()]],
                "input_labels": [[np.asarray(prompt.labels, dtype=np.int64).tolist()]],
            }
        self.tracker.processor.add_inputs_to_inference_session(
            inference_session=self.inference_session,
            frame_idx=prompt.frame_idx,
            obj_ids=prompt.obj_id,
            **inputs,
        )

    def _tracked_frame(
        self, output: Any, *, reverse: bool, prompts: list[ObjectPrompt]
    ) -> TrackedFrame:
        """One frame of transformers' propagation as a :class:`TrackedFrame`."""
        if list(output.object_ids) != [p.obj_id for p in prompts]:
            raise RuntimeError(
                f"video {self.video_id!r}: SAM 3 returned objects {list(output.object_ids)}, "
                f"prompted {[p.obj_id for p in prompts]}"
            )
        masks = self.tracker.processor.post_process_masks(
            [output.pred_masks], original_sizes=[list(self.size)], binarize=True
        )[0]
        return TrackedFrame(
            frame_idx=int(output.frame_idx),
            reverse=reverse,
            masks=masks[:, 0].cpu().numpy(),
            scores=output.object_score_logits.float().reshape(-1).cpu().numpy(),
        )
