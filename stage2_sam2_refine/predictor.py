"""SAM 2's video predictor (the official ``sam2`` 1.1.0), with a video's frames and image features
shared by all of its expressions, and memory bounded in the number of frames.

SAM 2's :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` decodes the whole video as float
tensors in ``init_state``, runs the image encoder on every frame it visits (keeping only the most
recent frame's features), and keeps every tracked frame's outputs (memory features, masks, object
pointer) until the state is reset. Refining every expression of a video that way decodes the
frames once per expression, encodes each frame about twice per expression (forward, then reverse
propagation), and holds memory that grows with the length of the video.

:class:`SharedFeatureVideoPredictor` keeps SAM 2's API and splits the per-video part off:

- :meth:`~SharedFeatureVideoPredictor.open_video` makes a :class:`VideoSession` from the frames
  (image paths with any names, PIL images already decoded, or a sequence that decodes a frame
  when indexed); a frame is decoded, resized and normalised when the image encoder needs it
  (bit-identical to SAM 2's JPEG loader, :func:`decode_frame`), and no frame is held as a tensor;
- the session keeps each frame's image features the first time any expression needs them, for
  the ``feature_cache_frames`` most recently used frames (on the model's device, or on the CPU);
  a frame dropped from it is decoded and encoded again when needed;
- SAM 2's own ``init_state`` takes that session in place of a path; ``reset_state``,
  ``add_new_mask`` / ``add_new_points_or_box`` and ``propagate_in_video`` then run as released;
- :meth:`~SharedFeatureVideoPredictor.drop_unreachable_outputs`, called after each step of a
  pass, drops the tracked outputs that SAM 2's memory attention can no longer read
  (:meth:`~SharedFeatureVideoPredictor.memory_reach` frames back, prompted frames always, and
  what the reverse pass from the earliest prompted frame reads of the forward pass), so that a
  pass holds a bounded number of them.

The image encoder does not depend on prompts or memory, and a dropped output is one no later step
reads, so none of this changes a mask: masks are bit-identical to SAM 2's per-expression
``init_state`` path (tested on CPU, float32).

What it changes in SAM 2 (each a wrapper that calls SAM 2's own method):

- ``init_state``: also takes a :class:`VideoSession`;
- ``_get_image_feature``: the frame's features come from, and go to, the session (with cached
  features, the image it returns next to them, which its callers never read, is a stand-in
  without storage, so that a cached frame is not decoded);
- ``_run_single_frame_inference``, ``_run_memory_encoder`` (and ``_encode_new_memory``): memory
  features stay float32 off CUDA (SAM 2 stores them in bfloat16, which its memory attention
  cannot take next to float32 weights on the CPU);
- ``propagate_in_video``: without SAM 2's progress bar per pass;

and it defines ``_clear_obj_non_cond_mem_around_input``, which sam2 1.1.0 calls (with
``clear_non_cond_mem_around_input``) but does not define, and ``drop_unreachable_outputs``, which
the tracker (:mod:`stage2_sam2_refine.sam2_tracker`) calls between steps; a variant with another
memory selection says what it may still read (:meth:`tracked_frames_in_reach`, as SAMURAI does).

Two of these replace a module-level name of ``sam2.sam2_video_predictor`` for the length of a
call, as no argument of the method reaches it (:func:`_sam2_module_attribute`, under a lock):

- ``init_state`` reads frames only through ``load_video_frames`` (a folder of frames named by
  index, or an mp4, decoded again for every state); for one call it also takes a session, and
  passes anything else to sam2's loader. SAM 2 then builds its own state around the session
  (which it indexes like its asynchronous loader's frames): nothing of ``init_state`` is copied,
  and the frames stay bit-identical to its JPEG loader's (:func:`load_frames`, tested);
- ``propagate_in_video`` draws a ``tqdm`` bar per pass, made when the pass starts (``tqdm``
  reads its ``TQDM_*`` settings once, at import): while our pass starts, that name is a
  function that returns the frames without a bar. SAM 2's own ``propagate_in_video`` runs
  (a copy would drift from it), and the process's standard error is left alone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from sam2 import sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from rvos.options import CacheDevice
from stage2_sam2_refine.tracker import (
    Frame,
    check_frame_headers,
    check_frame_size,
    frame_name,
)

logger = logging.getLogger(__name__)

# Frame normalisation of SAM 2's video loader (`sam2.utils.misc.load_video_frames` defaults).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

SAM2_VERSION = "1.1.0"  # the sam2 release the wrappers here and in samurai.py were written for


def installed_sam2_version() -> str:
    """The installed sam2 distribution's version (``unknown`` when it has no metadata)."""
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_sam2_compatibility(*, version: str = SAM2_VERSION) -> str:
    """``""`` when the installed sam2 is the release these wrappers were written for, else a
    one-line message saying which versions differ (the wrappers call sam2 methods that are not
    part of its public API)."""
    installed = installed_sam2_version()
    if installed == version:
        return ""
    return (
        f"sam2 version: expected {version}, found {installed} (the wrappers of "
        "stage2_sam2_refine call sam2's internal methods, which may have changed)"
    )


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class VideoSession:
    """One video opened for refinement: frames decoded when SAM 2 encodes them, image features
    kept for the most recently used frames.

    SAM 2's inference state holds it as its ``images``: SAM 2 only takes ``len()`` of them and
    indexes a frame (as it does with its own asynchronous frame loader), and it indexes one only to
    run the image encoder on it, which the feature cache spares for a frame it holds. No frame is
    held as a tensor between those uses.

    Attributes:
        video_id: the video's id (used in log and error messages).
        frames: the frames in video order (image paths or PIL images; a sequence that decodes a
            frame when indexed works too: only ``len()`` and indexing are used).
        image_size: the model's square input side ``S``.
        height: original frame height ``H`` (of the first frame; every frame must match it).
        width: original frame width ``W``.
        device: the model's device, where every computation runs.
        offload_video_to_cpu: a decoded frame is normalised on the CPU (else on ``device``).
        offload_state_to_cpu: SAM 2's inference state keeps its memories on the CPU.
        feature_device: where cached image features are kept between uses.
        feature_cache_frames: most frames whose features are kept (least recently used dropped
            first, and computed again when needed); None: every frame's.
        features: ``frame_idx -> backbone_fpn``, the image encoder's feature pyramid of that frame
            (``[1, C_l, H_l, W_l]`` per level, after SAM 2's high-resolution projections), least
            recently used first.
        pos_enc: the pyramid's positional encodings, ``[1, C, H_l, W_l]`` per level; they depend on
            the feature shape only, so one copy serves every frame.
        decoded_frames: frames decoded so far (a frame encoded again is decoded again).
    """

    video_id: str
    frames: Sequence[Frame]
    image_size: int
    height: int
    width: int
    device: torch.device
    offload_video_to_cpu: bool
    offload_state_to_cpu: bool
    feature_device: torch.device
    feature_cache_frames: int | None
    features: OrderedDict[int, list[torch.Tensor]] = field(default_factory=OrderedDict)
    pos_enc: list[torch.Tensor] | None = None
    decoded_frames: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original frames."""
        return self.height, self.width

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, frame_idx: int) -> torch.Tensor:
        """``[3, S, S] float32`` frame ``frame_idx``, decoded, resized and normalised now, on
        ``device`` (the CPU when ``offload_video_to_cpu``), as SAM 2 indexes its ``images``.

        Raises:
            OSError: the frame cannot be read (the message names the video and the file).
            ValueError: a frame that is not 8-bit, or not of the first frame's size.
        """
        frame_idx = operator.index(frame_idx)
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"video {self.video_id!r}: no frame {frame_idx}")
        frame = self.frames[frame_idx]
        pixels, size = decode_frame(frame, self.image_size, video_id=self.video_id, index=frame_idx)
        check_frame_size(self.video_id, frame_name(frame, frame_idx), size, self.size)
        self.decoded_frames += 1
        device = torch.device("cpu") if self.offload_video_to_cpu else self.device
        return normalise(frame_tensor(pixels), device=device)

    @property
    def images(self) -> torch.Tensor:
        """``[T, 3, S, S] float32`` every frame as ``__getitem__`` gives it, decoded now (the
        whole video at once: for checks on short clips; the trackers never ask for it)."""
        return torch.stack([self[t] for t in range(self.num_frames)])

    def backbone_out(self, frame_idx: int) -> dict[str, list[torch.Tensor]] | None:
        """The frame's cached image features as SAM 2's ``forward_image`` returns them (the
        entries SAM 2 reads: ``backbone_fpn``, ``vision_pos_enc``), on the compute device; None
        if not cached. The frame becomes the most recently used."""
        cached = self.features.get(frame_idx)
        if cached is None:
            return None
        self.features.move_to_end(frame_idx)
        return {
            "backbone_fpn": [feat.to(self.device, non_blocking=True) for feat in cached],
            "vision_pos_enc": self.pos_enc,
        }

    def keep(self, frame_idx: int, backbone_out: dict[str, Any]) -> None:
        """Cache the features SAM 2's ``forward_image`` computed for ``frame_idx`` (the most
        recently used frame), dropping the least recently used beyond ``feature_cache_frames``."""
        if self.pos_enc is None:
            self.pos_enc = list(backbone_out["vision_pos_enc"])
        # a blocking copy: a non-blocking one to the CPU could be read before it lands
        self.features[frame_idx] = [
            feat.to(self.feature_device) for feat in backbone_out["backbone_fpn"]
        ]
        self.features.move_to_end(frame_idx)
        limit = self.feature_cache_frames
        while limit is not None and len(self.features) > limit:
            self.features.popitem(last=False)

    def clear_features(self) -> None:
        """Drop the cached image features (they are recomputed on demand)."""
        self.features.clear()
        self.pos_enc = None


def _square_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """``[S, S, 3]`` pixels of ``image`` in RGB, resized as SAM 2's loader resizes frames (PIL's
    default filter for RGB images, bicubic)."""
    return np.array(image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC))


def decode_frame(
    frame: Frame, image_size: int, *, video_id: str, index: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """One frame decoded and resized exactly as SAM 2's JPEG-folder loader does.

    Args:
        frame: an image path (a JPEG, as SAM 2 reads them) or a PIL image already decoded
            (converted to RGB like a file is: the same pixels give the same array as their file).
        image_size: the model's square input side ``S``.
        video_id, index: named in error messages.
    Returns:
        ``([S, S, 3] uint8 pixels, (H, W) of the frame)``.
    Raises:
        OSError: a missing or unreadable frame (the message names the video and the file).
        ValueError: a frame that is not 8-bit.
    """
    name = frame_name(frame, index)
    if isinstance(frame, Image.Image):
        frame_size = (frame.height, frame.width)
        pixels = _square_rgb(frame, image_size)
    else:
        try:
            with Image.open(frame) as img:
                frame_size = (img.height, img.width)
                pixels = _square_rgb(img, image_size)
        except OSError as err:
            raise OSError(f"video {video_id!r}: cannot read frame {name}: {err}") from err
    if pixels.dtype != np.uint8:
        raise ValueError(f"video {video_id!r}: frame {name} is not 8-bit ({pixels.dtype})")
    return pixels, frame_size


def frame_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[3, S, S] float32`` in ``[0, 1]`` from ``[S, S, 3] uint8`` pixels: a float64 division
    then a float32 copy, as ``sam2.utils.misc._load_img_as_tensor``."""
    return torch.from_numpy(pixels / 255.0).permute(2, 0, 1).to(torch.float32)


def normalise(images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """Frames ``[..., 3, S, S] float32`` in ``[0, 1]`` moved to ``device`` and normalised with
    SAM 2's mean and standard deviation (a float32 subtraction then division, as SAM 2's
    loader)."""
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=device)[:, None, None]
    return (images.to(device) - mean) / std


def load_frames(
    frames: Sequence[Frame], image_size: int, *, video_id: str = ""
) -> tuple[torch.Tensor, int, int]:
    """Decode and resize every frame exactly as SAM 2's JPEG-folder loader does (not normalised),
    all at once (:class:`VideoSession` decodes one frame at a time, with :func:`decode_frame`).

    Args:
        frames: the frames in video order (see :func:`decode_frame`).
        image_size: the model's square input side ``S``.
        video_id: named in error messages.
    Returns:
        ``([T, 3, S, S] float32 in [0, 1], H, W)``.
    Raises:
        ValueError: no frames, a frame that is not 8-bit, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if len(frames) == 0:
        raise ValueError(f"video {video_id!r}: no frames to load")
    images = torch.zeros(len(frames), 3, image_size, image_size, dtype=torch.float32)
    size: tuple[int, int] | None = None
    for index in range(len(frames)):
        frame = frames[index]
        pixels, frame_size = decode_frame(frame, image_size, video_id=video_id, index=index)
        size = size or frame_size
        check_frame_size(video_id, frame_name(frame, index), frame_size, size)
        images[index] = frame_tensor(pixels)
    assert size is not None
    return images, size[0], size[1]


# --------------------------------------------------------------------------------------------------
# sam2's module-level functions
# --------------------------------------------------------------------------------------------------

_SAM2_MODULE_LOCK = threading.RLock()
_DONE = object()


@contextlib.contextmanager
def _sam2_module_attribute(name: str, replacement: Callable[[Any], Any]) -> Iterator[None]:
    """``sam2.sam2_video_predictor.<name>`` is ``replacement(original)`` inside the body (one
    caller at a time; restored on exit)."""
    with _SAM2_MODULE_LOCK:
        original = getattr(sam2_video_predictor, name)
        setattr(sam2_video_predictor, name, replacement(original))
        try:
            yield
        finally:
            setattr(sam2_video_predictor, name, original)


def _loading_opened_videos(load_video_frames: Callable[..., Any]) -> Callable[..., Any]:
    """sam2's ``load_video_frames``, also taking a :class:`VideoSession` (returned as it is)."""

    def load(video_path: Any, **kwargs: Any) -> Any:
        if isinstance(video_path, VideoSession):
            return video_path, video_path.height, video_path.width
        return load_video_frames(video_path=video_path, **kwargs)

    return load


def _without_progress_bar(_tqdm: Any) -> Callable[..., Any]:
    """In place of ``tqdm``: the iterable itself, no bar."""

    def no_bar(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        return iterable

    return no_bar


def _unread_image(image_size: int, device: torch.device) -> torch.Tensor:
    """``[1, 3, S, S] float32`` zeros without storage (one element, broadcast): the image SAM 2's
    ``_get_image_feature`` hands back with a frame's cached features, which no caller reads."""
    return torch.zeros((), dtype=torch.float32, device=device).expand(1, 3, image_size, image_size)


# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------


class SharedFeatureVideoPredictor(SAM2VideoPredictor):
    """SAM 2 video predictor whose videos are opened once and whose image features are shared.

    Use :meth:`open_video` once per video, SAM 2's ``init_state`` on the session it returns, and
    SAM 2's ``reset_state`` between expressions; everything else is SAM 2's API. States made
    from a path by ``init_state`` keep working (with SAM 2's own frame loading and features).

    Args:
        maskmem_dtype: dtype memory features are kept in between frames. ``None``: bfloat16 on
            CUDA (as SAM 2 does), float32 elsewhere (bfloat16 memories break the float32 CPU
            memory attention).
        **kwargs: :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` arguments.
    """

    def __init__(self, maskmem_dtype: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # dtype of stored memory features; None: bfloat16 on CUDA, float32 elsewhere
        self.maskmem_dtype = None if maskmem_dtype is None else getattr(torch, maskmem_dtype)
        self._encoded_memory: torch.Tensor | None = None  # the last memory, as encoded
        report = check_sam2_compatibility()
        if report:
            logger.warning("%s may not work as intended: %s", type(self).__name__, report)

    # -- per video ----------------------------------------------------------------------------

    @torch.inference_mode()
    def open_video(
        self,
        frames: Sequence[Frame],
        *,
        video_id: str = "",
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        feature_cache_device: CacheDevice | str = CacheDevice.auto,
        feature_cache_frames: int | None = None,
    ) -> VideoSession:
        """Open a video for all of its expressions; its frames are decoded when SAM 2 encodes them.

        Only the frames' sizes are read here: every frame's file header for a list or tuple of
        paths, the first frame otherwise (see :func:`check_frame_headers`).

        Args:
            frames: the frames in video order: JPEG paths, as SAM 2 reads them, or decoded PIL
                RGB images (e.g. from an mp4); both give identical tensors for identical pixels
                (see :func:`decode_frame`). Only ``len(frames)`` and ``frames[t]`` are used, so
                a sequence that decodes a frame when indexed keeps the video out of memory.
            video_id: named in logs and errors.
            offload_video_to_cpu: normalise decoded frames on the CPU.
            offload_state_to_cpu: keep the tracking memories of states made from this session on
                the CPU.
            feature_cache_device: ``auto`` keeps cached image features on the model's device,
                ``cpu`` keeps them on the CPU (long videos); results are identical.
            feature_cache_frames: most frames whose image features are kept (the least recently
                used are dropped and computed again when needed; results are identical); None:
                every frame's.
        Returns:
            the video's session; pass it to SAM 2's ``init_state``.
        Raises:
            ValueError: no frames, frames of different sizes (where checked up front), or a
                ``feature_cache_frames`` below 1.
            OSError: a missing or unreadable frame (where checked up front).
        """
        try:
            feature_cache_device = CacheDevice(feature_cache_device)
        except ValueError:
            raise ValueError(
                f"feature_cache_device must be one of {[str(d) for d in CacheDevice]}, "
                f"got {feature_cache_device!r}"
            ) from None
        if feature_cache_frames is not None and feature_cache_frames < 1:
            raise ValueError(f"feature_cache_frames must be 1 or more, got {feature_cache_frames}")
        device = self.device
        height, width = check_frame_headers(frames, video_id=video_id)
        feature_device = device if feature_cache_device == CacheDevice.auto else torch.device("cpu")
        logger.debug(
            "video %s: %d frames of %dx%d, decoded at %d px when encoded",
            video_id,
            len(frames),
            width,
            height,
            self.image_size,
        )
        return VideoSession(
            video_id=video_id,
            frames=frames,
            image_size=self.image_size,
            height=height,
            width=width,
            device=device,
            offload_video_to_cpu=offload_video_to_cpu,
            offload_state_to_cpu=offload_state_to_cpu,
            feature_device=feature_device,
            feature_cache_frames=feature_cache_frames,
        )

    @torch.inference_mode()
    def init_state(self, video_path: Any, **kwargs: Any) -> dict[str, Any]:
        """SAM 2's ``init_state``; ``video_path`` may also be a :class:`VideoSession` (no frame is
        decoded again, and the session's offload settings apply).

        sam2 1.1.0 reads the frames only through its module-level ``load_video_frames`` (a
        folder of frames named by index, or an mp4), so that function also takes the session
        for the duration of the call; SAM 2 builds its own state around it.
        """
        if not isinstance(video_path, VideoSession):
            return super().init_state(video_path, **kwargs)
        if kwargs:
            raise TypeError(f"an opened video carries its own settings; got {sorted(kwargs)}")
        with _sam2_module_attribute("load_video_frames", _loading_opened_videos):
            return super().init_state(
                video_path,
                offload_video_to_cpu=video_path.offload_video_to_cpu,
                offload_state_to_cpu=video_path.offload_state_to_cpu,
            )

    # -- image features -----------------------------------------------------------------------

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """SAM 2's, with the frame's features kept in the session: SAM 2 looks in
        ``inference_state["cached_features"]`` (the last frame it encoded) first, so the
        session's copy is put there, and what SAM 2 computes is kept in the session.

        With the session's copy, the image SAM 2 returns next to the features is a stand-in
        without storage (:func:`_unread_image`): its two callers (``_run_single_frame_inference``
        and ``_run_memory_encoder``) never read it, and a frame whose features are cached is not
        decoded again.

        Returns:
            ``(image [B, 3, S, S], backbone_out, vision_feats, vision_pos_embeds, feat_sizes)`` as
            SAM 2's: features ``[H_l * W_l, B, C_l]`` per level, ``B = batch_size``.
        """
        video = inference_state["images"]
        if not isinstance(video, VideoSession):
            return super()._get_image_feature(inference_state, frame_idx, batch_size)
        cached = video.backbone_out(frame_idx)
        if cached is not None:
            image = _unread_image(self.image_size, inference_state["device"])
            inference_state["cached_features"] = {frame_idx: (image, cached)}
        features = super()._get_image_feature(inference_state, frame_idx, batch_size)
        if cached is None:
            _, backbone_out = inference_state["cached_features"][frame_idx]
            video.keep(frame_idx, backbone_out)
        return features

    # -- memory features ----------------------------------------------------------------------

    def _encode_new_memory(self, *args, **kwargs):
        """SAM 2's memory encoder; the result is remembered before SAM 2 casts it (see
        :meth:`_kept_memory`)."""
        maskmem_features, maskmem_pos_enc = super()._encode_new_memory(*args, **kwargs)
        self._encoded_memory = maskmem_features
        return maskmem_features, maskmem_pos_enc

    def _run_single_frame_inference(self, *args, **kwargs):
        """SAM 2's, with the memory features in :meth:`_kept_memory`'s dtype."""
        self._encoded_memory = None
        current_out, pred_masks = super()._run_single_frame_inference(*args, **kwargs)
        if current_out["maskmem_features"] is not None:
            current_out["maskmem_features"] = self._kept_memory(current_out["maskmem_features"])
        return current_out, pred_masks

    def _run_memory_encoder(self, *args, **kwargs):
        """SAM 2's, with the memory features in :meth:`_kept_memory`'s dtype."""
        self._encoded_memory = None
        maskmem_features, maskmem_pos_enc = super()._run_memory_encoder(*args, **kwargs)
        return self._kept_memory(maskmem_features), maskmem_pos_enc

    def _kept_memory(self, stored: torch.Tensor) -> torch.Tensor:
        """Memory features ``[B, C_mem, H, W]`` as kept between frames: SAM 2 stores them in
        bfloat16 (``stored``); off CUDA, or with ``maskmem_dtype``, the encoded ones are kept
        instead, in float32 (or ``maskmem_dtype``), where SAM 2 stores them."""
        encoded = self._encoded_memory
        if encoded is None:
            return stored
        dtype = self.maskmem_dtype
        if dtype is None:
            if encoded.device.type == "cuda":
                return stored
            dtype = torch.float32
        return encoded.to(dtype).to(stored.device, non_blocking=True)

    # -- propagation --------------------------------------------------------------------------

    def propagate_in_video(self, inference_state, *args, **kwargs):
        """SAM 2's ``propagate_in_video`` (the same frames and masks), without its progress bar
        per pass (a MeViS run makes thousands of passes; callers show their own progress).

        Yields:
            ``(frame_idx, obj_ids, masks)``: ``masks`` ``[num_objects, 1, H, W] float32`` logits
            at video size, on the compute device, objects in ``obj_ids`` order.
        """
        frames = super().propagate_in_video(inference_state, *args, **kwargs)
        # SAM 2 makes the bar when the pass starts, at the first frame
        with _sam2_module_attribute("tqdm", _without_progress_bar):
            first = next(frames, _DONE)
        if first is _DONE:
            return
        yield first
        yield from frames

    # -- tracked outputs out of reach ---------------------------------------------------------

    def memory_reach(self) -> int:
        """How far back SAM 2's memory attention reads tracked (non-conditioning) outputs, in
        frames from the frame being tracked, in the direction of the pass (sam2 1.1.0's
        ``_prepare_memory_conditioned_features``).

        It reads the previous frame and ``num_maskmem - 2`` more spatial memories, every
        ``memory_temporal_stride_for_eval``-th frame (at most ``1 + (num_maskmem - 2) * stride``
        frames back), and the object pointers of up to ``max_obj_ptrs_in_encoder - 1`` frames
        back; with ``num_maskmem = 0``, no memory. Prompted (conditioning) frames are read
        wherever they are, and are never dropped.
        """
        if self.num_maskmem == 0:
            return 0
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        spatial = 1 + (self.num_maskmem - 2) * stride if self.num_maskmem >= 2 else 0
        pointers = self.max_obj_ptrs_in_encoder - 1 if self.use_obj_ptrs_in_encoder else 0
        return max(spatial, pointers)

    def tracked_frames_in_reach(
        self, outputs: Mapping[int, Any], *, frame_idx: int, reverse: bool
    ) -> set[int]:
        """The frames among one object's tracked outputs (``frame_idx -> output``) that the
        steps after ``frame_idx`` of a pass may still read: the :meth:`memory_reach` frames up
        to ``frame_idx`` (``frame_idx`` and before it, or after it in a reverse pass).

        The frames further back are out of reach for good: each later step reads only frames
        closer to it. Frames ahead of ``frame_idx`` are not listed (a pass writes a frame before
        it reads it).
        """
        sign = -1 if reverse else 1
        reach = self.memory_reach()
        return {t for t in outputs if 0 <= (frame_idx - t) * sign < reach}

    def drop_unreachable_outputs(
        self,
        inference_state: dict[str, Any],
        *,
        frame_idx: int,
        reverse: bool,
        reverse_from: int | None = None,
    ) -> int:
        """After the step on ``frame_idx`` of a pass, drop every object's tracked outputs
        (``output_dict_per_obj[obj_idx]["non_cond_frame_outputs"]``: memory features, masks,
        pointer, score) that no later step can read (:meth:`tracked_frames_in_reach`), so that a
        pass holds a bounded number of them whatever the length of the video.

        A forward pass that a reverse pass from ``reverse_from`` will follow (SAM 2's
        ``propagate_in_video(reverse=True)`` from the earliest prompted frame ``f0``) also keeps
        what that reverse pass reads of it: the outputs its first step, on ``f0``, may read
        (``f0 + 1`` onwards). Frames ahead of ``frame_idx`` are left alone, as are prompted
        frames. A later pass from another frame, or a new prompt on a tracked frame, sees the
        dropped frames as untracked.

        Returns:
            how many outputs were dropped (all objects together).
        """
        sign = -1 if reverse else 1
        dropped = 0
        for obj_output_dict in inference_state["output_dict_per_obj"].values():
            outputs = obj_output_dict["non_cond_frame_outputs"]
            keep = self.tracked_frames_in_reach(outputs, frame_idx=frame_idx, reverse=reverse)
            if reverse_from is not None:
                # the reverse pass reads from f0 + 1 on, as if it had just tracked f0 + 1
                later = {t: out for t, out in outputs.items() if t > reverse_from}
                keep |= self.tracked_frames_in_reach(
                    later, frame_idx=reverse_from + 1, reverse=True
                )
            for t in [t for t in outputs if t not in keep and (frame_idx - t) * sign >= 0]:
                del outputs[t]
                dropped += 1
        return dropped

    def _clear_obj_non_cond_mem_around_input(
        self, inference_state: dict[str, Any], frame_idx: int, obj_idx: int
    ) -> None:
        """Drop object ``obj_idx``'s tracked (non-conditioning) outputs within
        ``memory_temporal_stride_for_eval * num_maskmem`` frames of the prompted ``frame_idx``,
        both ways (SAM 2's ``_clear_non_cond_mem_around_input`` for one object), so that memories
        older than the prompt do not compete with it. sam2 1.1.0 calls it when
        ``clear_non_cond_mem_around_input`` is on, but does not define it.
        """
        radius = self.memory_temporal_stride_for_eval * self.num_maskmem
        outputs = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            outputs.pop(t, None)
