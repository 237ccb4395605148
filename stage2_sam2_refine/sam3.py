"""SAM 3's tracker as a stage-2 tracker (``stage2.tracker=sam3``), through ``transformers``.

SAM 3 (arXiv 2511.16719) is a detector and a SAM 2-style memory tracker on one vision backbone;
``transformers``' :class:`~transformers.Sam3TrackerVideoModel` is its tracker, prompted with
masks, boxes or clicks. This module puts it behind :mod:`stage2_sam2_refine.tracker`'s interface
with transformers' public video API:

- :meth:`Sam3Tracker.open_video`: ``Sam3TrackerVideoProcessor.init_video_session`` resizes and
  normalises the video's frames once;
- :meth:`Sam3Session.track`, per expression: ``reset_tracking_data`` forgets the previous
  expression's prompts and memories (and keeps frames and features), each prompt is added with
  ``add_inputs_to_inference_session`` and its frame run at once (``model(inference_session,
  frame_idx)``), then ``propagate_in_video_iterator`` runs forward from the earliest prompted
  frame and in reverse from it; ``post_process_masks`` upsamples each frame's mask logits to the
  frame size and keeps ``> 0``.

The vision backbone runs once per frame per video, for every expression and both directions: the
session's vision-feature cache (``session.cache``, a plain attribute) is replaced by a
:class:`VideoFeatureCache`, transformers' cache class keeping every frame of the video on
``stage2.feature_cache_device``. The tracking itself is transformers' code, unchanged.

Weights: a transformers folder (``config.json``, ``*.safetensors``, the processor's
``processor_config.json``) or a hub id (``facebook/sam3``, gated); :func:`checkpoint_problem` says
in one line what is wrong with either before anything loads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from rvos.checkpoints import CheckpointError
from rvos.options import CacheDevice
from stage2_sam2_refine.options import Stage2Options
from stage2_sam2_refine.tracker import Frame, ObjectPrompt, TrackedFrame, propagation_order

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
RELEASED_REPO = "facebook/sam3"
ACCESS_HINT = (
    f"request access on https://huggingface.co/{RELEASED_REPO}, run `hf auth login`, or point "
    "stage2.checkpoint= at a local folder (README: SAM 3)"
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
    """SAM 3's tracker and its processor from a folder or a hub id, on the CPU, in eval mode.

    Raises:
        CheckpointError: weights of the tracker missing from the checkpoint (transformers would
            initialise them at random).
    """
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

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


@functools.cache
def _feature_cache_class() -> type:
    """:class:`VideoFeatureCache` (defined on first use: older transformers lack its parent)."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceCache,
    )

    class VideoFeatureCache(Sam3TrackerVideoInferenceCache):
        """Every frame's vision features of one video, kept for all its expressions.

        transformers' cache, sized to the whole video (it keeps the last
        ``max_vision_features_cache_size`` frames) and on its own device (it keeps features with
        the tracking state); the positional encodings are kept once, on the model's device: they
        depend on the feature shape only, and the parent would copy them (about 110 MB at SAM 3's
        1008 px) per frame whenever the cache is not on the model's device.

        Args:
            inference_device: where the model runs.
            feature_device: where features wait between uses.
            num_frames: the video's length.
        """

        def __init__(
            self, *, inference_device: torch.device, feature_device: torch.device, num_frames: int
        ) -> None:
            super().__init__(
                inference_device=inference_device,
                inference_state_device=feature_device,
                max_vision_features_cache_size=num_frames,
            )
            self.position_encodings: list[torch.Tensor] | None = None

        def cache_vision_features(self, frame_idx: int, features: dict) -> None:
            if self.position_encodings is None:
                self.position_encodings = [
                    p.to(self.inference_device) for p in features["vision_pos_embeds"]
                ]
            super().cache_vision_features(frame_idx, {"vision_feats": features["vision_feats"]})

        def get_vision_features(self, frame_idx: int) -> dict | None:
            cached = super().get_vision_features(frame_idx)
            if cached is None:
                return None
            return {**cached, "vision_pos_embeds": self.position_encodings}

    return VideoFeatureCache


def load_rgb_frames(frames: Sequence[Frame], *, video_id: str) -> list[Image.Image]:
    """The frames decoded to RGB, all of one size.

    Raises:
        ValueError: no frames, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if len(frames) == 0:
        raise ValueError(f"video {video_id!r}: no frames to load")
    images = []
    for index, frame in enumerate(frames):
        if isinstance(frame, Image.Image):
            name, image = f"#{index}", frame.convert("RGB")
        else:
            name = os.fspath(frame)
            try:
                with Image.open(frame) as img:
                    image = img.convert("RGB")
            except OSError as err:
                raise OSError(f"video {video_id!r}: cannot read frame {name}: {err}") from err
        if images and image.size != images[0].size:
            raise ValueError(
                f"video {video_id!r}: frame {name} is {image.width}x{image.height}, the first "
                f"frame is {images[0].width}x{images[0].height}"
            )
        images.append(image)
    return images


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
        return torch.autocast("cuda", dtype=getattr(torch, str(self.options.autocast)))

    def open_video(
        self, frames: Sequence[Frame], *, video_id: str, offload: bool = False
    ) -> Sam3Session:
        """Decode and normalise a video once for all of its expressions.

        Args:
            frames: the video's frames in order (image paths or PIL images).
            video_id: named in log and error messages.
            offload: frames, tracking state and features in host memory, whatever the options
                say (``stage2.offload_video_to_cpu``, ``offload_state_to_cpu``,
                ``feature_cache_device``).
        """
        options, device, cpu = self.options, self.device, torch.device("cpu")
        images = load_rgb_frames(frames, video_id=video_id)
        on_cpu = offload or options.offload_video_to_cpu
        features_on_cpu = offload or options.feature_cache_device == CacheDevice.cpu
        session = self.processor.init_video_session(
            video=images,
            inference_device=device,
            inference_state_device=cpu if offload or options.offload_state_to_cpu else device,
            processing_device=cpu if on_cpu else device,
            video_storage_device=cpu if on_cpu else device,
            max_vision_features_cache_size=len(images),
            dtype=torch.float32,  # the weights' (CUDA mixed precision is autocast's)
        )
        # Replaced, not configured: the session's own cache sits with the tracking state and
        # copies the frame-independent positional encodings per frame.
        session.cache = _feature_cache_class()(
            inference_device=device,
            feature_device=cpu if features_on_cpu else device,
            num_frames=len(images),
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
                yield frame
        if next(steps, None) is not None:
            raise RuntimeError(f"video {self.video_id!r}: SAM 3's propagation stopped early")

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
