"""A SAM 2 video predictor that loads a video once and shares its image features.

SAM 2's :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` decodes the video in ``init_state``
and runs the image encoder on every frame it visits, keeping only the most recent frame's
features. Refining every expression of a video that way decodes the frames once per expression
and encodes each frame about twice per expression (forward, then reverse propagation).

:class:`SharedFeatureVideoPredictor` splits the per-video part from the per-expression part:

- :meth:`~SharedFeatureVideoPredictor.open_video` decodes the frames once (JPEG paths, or PIL
  images already decoded) into a :class:`VideoSession`, which also caches each frame's image
  features the first time any expression needs them (on the model's device, or on the CPU for
  long videos);
- :meth:`~SharedFeatureVideoPredictor.init_expression_state` makes a fresh SAM 2 inference state
  over a session; SAM 2's own ``add_new_mask`` / ``add_new_points_or_box`` /
  ``propagate_in_video`` then run on it.

The image encoder does not depend on prompts or memory, so sharing its output changes nothing:
masks are bit-identical to SAM 2's per-expression ``init_state`` path (tested on CPU, float32).

What it overrides in SAM 2, and nothing else:

- ``_get_image_feature``: served from the session's cache;
- ``_run_single_frame_inference`` and ``_run_memory_encoder``: memory features are stored in
  bfloat16 on CUDA, as SAM 2 does, and in float32 elsewhere (the CPU memory attention cannot take
  bfloat16 memories next to float32 weights); the tracking call goes through :meth:`_track_frame`;
- ``propagate_in_video``: the same masks, without SAM 2's progress bar per pass;
- ``_clear_obj_non_cond_mem_around_input``: called by sam2 1.1.0 when
  ``clear_non_cond_mem_around_input`` is on, but not defined there.

A tracker variant (e.g. :mod:`stage2_sam2_refine.samurai`) overrides one hook,
:meth:`~SharedFeatureVideoPredictor._track_frame` (one object on one frame, SAM 2's ``track_step``
by default), and names the entries of its output to keep with each frame in
:attr:`~SharedFeatureVideoPredictor.frame_record_keys`.

The sam2 members these classes override or call are recorded with their 1.1.0 signatures in
:data:`SAM2_SIGNATURES`; building a predictor logs a warning naming any difference with the
installed sam2 (:func:`check_sam2_compatibility`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import fill_holes_in_mask_scores

logger = logging.getLogger(__name__)

# Frame normalisation of SAM 2's video loader (`sam2.utils.misc.load_video_frames` defaults).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Key of the shared VideoSession inside a SAM 2 inference-state dict.
SESSION_KEY = "video_session"

FEATURE_CACHE_DEVICES = ("auto", "cpu")

# A frame as `open_video` takes it: the path of an image file, or an image already decoded.
Frame = str | os.PathLike | Image.Image

# --------------------------------------------------------------------------------------------------
# The sam2 these classes were written against
# --------------------------------------------------------------------------------------------------

SAM2_VERSION = "1.1.0"  # the sam2 release the subclasses here and in samurai.py were written for

SAM2_PREDICTOR = "sam2.sam2_video_predictor:SAM2VideoPredictor"  # prefix of its members below

# sam2 members SharedFeatureVideoPredictor overrides or calls as internals, as
# "module:qualified.name" -> `str(inspect.signature(member))` in sam2 1.1.0; None: sam2 1.1.0 does
# not define it (we do).
SAM2_SIGNATURES: dict[str, str | None] = {
    # overridden
    f"{SAM2_PREDICTOR}.__init__": (
        "(self, fill_hole_area=0, non_overlap_masks=False, clear_non_cond_mem_around_input=False, "
        "add_all_frames_to_correct_as_cond=False, **kwargs)"
    ),
    f"{SAM2_PREDICTOR}._get_image_feature": "(self, inference_state, frame_idx, batch_size)",
    f"{SAM2_PREDICTOR}._run_single_frame_inference": (
        "(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame, "
        "point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None)"
    ),
    f"{SAM2_PREDICTOR}._run_memory_encoder": (
        "(self, inference_state, frame_idx, batch_size, high_res_masks, object_score_logits, "
        "is_mask_from_pts)"
    ),
    f"{SAM2_PREDICTOR}.propagate_in_video": (
        "(self, inference_state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False)"
    ),
    # called by sam2 1.1.0's propagation (when clear_non_cond_mem_around_input), defined here only
    f"{SAM2_PREDICTOR}._clear_obj_non_cond_mem_around_input": None,
    # mirrored, for one object, by _clear_obj_non_cond_mem_around_input
    f"{SAM2_PREDICTOR}._clear_non_cond_mem_around_input": "(self, inference_state, frame_idx)",
    # called
    f"{SAM2_PREDICTOR}.propagate_in_video_preflight": "(self, inference_state)",
    f"{SAM2_PREDICTOR}._get_obj_num": "(self, inference_state)",
    f"{SAM2_PREDICTOR}._get_orig_video_res_output": "(self, inference_state, any_res_masks)",
    f"{SAM2_PREDICTOR}._get_maskmem_pos_enc": "(self, inference_state, current_out)",
    f"{SAM2_PREDICTOR}.forward_image": "(self, img_batch: torch.Tensor)",
    f"{SAM2_PREDICTOR}._prepare_backbone_features": "(self, backbone_out)",
    f"{SAM2_PREDICTOR}._encode_new_memory": (
        "(self, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits, "
        "is_mask_from_pts)"
    ),
    f"{SAM2_PREDICTOR}.track_step": (
        "(self, frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, "
        "feat_sizes, point_inputs, mask_inputs, output_dict, num_frames, track_in_reverse=False, "
        "run_mem_encoder=True, prev_sam_mask_logits=None)"
    ),
    "sam2.utils.misc:fill_holes_in_mask_scores": "(mask, max_area)",
}


def installed_sam2_version() -> str:
    """The installed sam2 distribution's version (``unknown`` when it has no metadata)."""
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _installed_signature(name: str) -> str | None:
    """``str(inspect.signature(...))`` of ``module:qualified.name`` in the installed sam2; None if
    it does not exist."""
    module_name, _, qualname = name.partition(":")
    try:
        member: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            member = getattr(member, part)
    except (ImportError, AttributeError):
        return None
    try:
        return str(inspect.signature(member))
    except (TypeError, ValueError):
        return f"<{type(member).__name__} without a signature>"


def check_sam2_compatibility(
    signatures: Mapping[str, str | None] = SAM2_SIGNATURES,
    *,
    version: str = SAM2_VERSION,
    strict: bool = False,
) -> str:
    """Compare the installed sam2 with the version and member signatures a subclass relies on.

    Args:
        signatures: ``module:qualified.name -> signature`` (None: must be absent from sam2), e.g.
            :data:`SAM2_SIGNATURES` or a predictor class's ``sam2_signatures``.
        version: the sam2 release ``signatures`` were taken from.
        strict: raise instead of returning a message.
    Returns:
        ``""`` when everything matches; else a message with one line per difference (the version,
        or a member with its expected and found signatures).
    Raises:
        RuntimeError: ``strict`` and a difference.
    """
    differences = []
    installed = installed_sam2_version()
    if installed != version:
        differences.append(f"sam2 version: expected {version}, found {installed}")
    for name, expected in signatures.items():
        found = _installed_signature(name)
        if found == expected:
            continue
        if expected is None:
            differences.append(
                f"{name}: expected absent from sam2 (ours now overrides it), found {found}"
            )
        else:
            differences.append(f"{name}: expected {expected}, found {found or 'nothing'}")
    if not differences:
        return ""
    message = "the installed sam2 differs from the one this code was written for:\n  " + (
        "\n  ".join(differences)
    )
    if strict:
        raise RuntimeError(message)
    return message


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSession:
    """One video opened for refinement: frames decoded once, image features encoded once.

    Attributes:
        video_id: the video's id (used in log and error messages).
        images: ``[T, 3, S, S] float32`` frames resized to the model's square input and
            normalised, on ``device`` (or on the CPU when ``offload_video_to_cpu``).
        height: original frame height ``H``.
        width: original frame width ``W``.
        device: the model's device, where every computation runs.
        offload_video_to_cpu: ``images`` stay on the CPU.
        offload_state_to_cpu: per-expression SAM 2 states keep their memories on the CPU.
        feature_device: where cached image features are kept between uses.
        features: ``frame_idx -> backbone_fpn``, the image encoder's feature pyramid of that frame
            (``[1, C_l, H_l, W_l]`` per level, after SAM 2's high-resolution projections).
        pos_enc: the pyramid's positional encodings, ``[1, C, H_l, W_l]`` per level; they depend on
            the feature shape only, so one copy serves every frame.
    """

    video_id: str
    images: torch.Tensor
    height: int
    width: int
    device: torch.device
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False
    feature_device: torch.device = torch.device("cpu")
    features: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    pos_enc: list[torch.Tensor] | None = None

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the original frames."""
        return self.height, self.width

    def clear_features(self) -> None:
        """Drop the cached image features (they are recomputed on demand)."""
        self.features.clear()
        self.pos_enc = None


def _square_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """``[S, S, 3]`` pixels of ``image`` in RGB, resized as SAM 2's loader resizes frames (PIL's
    default filter for RGB images, bicubic)."""
    return np.array(image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC))


def load_frames(
    frames: Sequence[Frame], image_size: int, *, video_id: str = ""
) -> tuple[torch.Tensor, int, int]:
    """Decode and resize frames exactly as SAM 2's JPEG-folder loader does (not normalised).

    Args:
        frames: the frames in video order: image paths (JPEGs, as SAM 2 reads them), or PIL
            images already decoded (converted to RGB like a file is; the same pixels give the same
            tensor as their file).
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
    for index, frame in enumerate(frames):
        if isinstance(frame, Image.Image):
            name = f"#{index}"
            frame_size = (frame.height, frame.width)
            pixels = _square_rgb(frame, image_size)
        else:
            name = os.fspath(frame)
            try:
                with Image.open(frame) as img:
                    frame_size = (img.height, img.width)
                    pixels = _square_rgb(img, image_size)
            except OSError as err:
                raise OSError(f"video {video_id!r}: cannot read frame {name}: {err}") from err
        if pixels.dtype != np.uint8:
            raise ValueError(f"video {video_id!r}: frame {name} is not 8-bit ({pixels.dtype})")
        if size is None:
            size = frame_size
        elif frame_size != size:
            raise ValueError(
                f"video {video_id!r}: frame {name} is {frame_size[1]}x{frame_size[0]}, "
                f"the first frame is {size[1]}x{size[0]}"
            )
        # float64 division then a float32 copy, as `sam2.utils.misc._load_img_as_tensor`.
        images[index] = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)
    assert size is not None
    return images, size[0], size[1]


# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectFrame:
    """One object on one frame, as :meth:`SharedFeatureVideoPredictor._track_frame` gets it.

    Attributes:
        obj_idx: the object's slot in the inference state.
        obj_id: the caller's id of the object.
        frame_idx: the frame being tracked.
        reverse: the tracking direction (True: towards frame 0).
        is_init_cond_frame: a prompted frame tracked before nothing else (no memory is used).
        vision_feats: the frame's image features, ``[H_l * W_l, 1, C_l]`` per level.
        vision_pos_embeds: their positional encodings, same shapes.
        feat_sizes: ``(H_l, W_l)`` per level.
        point_inputs: the click prompt on this frame, ``{"point_coords": [1, P, 2] float32,
            "point_labels": [1, P] int32}``, or None.
        mask_inputs: the mask prompt on this frame, ``[1, 1, S, S] float32``, or None.
        run_mem_encoder: encode the result into a memory (False while prompts are being added).
        prev_sam_mask_logits: ``[1, 1, S/4, S/4]`` earlier logits on this frame, fed back with new
            clicks, or None.
    """

    obj_idx: int
    obj_id: Any
    frame_idx: int
    reverse: bool
    is_init_cond_frame: bool
    vision_feats: list[torch.Tensor]
    vision_pos_embeds: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]
    point_inputs: dict[str, torch.Tensor] | None
    mask_inputs: torch.Tensor | None
    run_mem_encoder: bool
    prev_sam_mask_logits: torch.Tensor | None

    @property
    def prompted(self) -> bool:
        """Whether the frame carries a prompt (clicks, a box or a mask) for this object."""
        return self.point_inputs is not None or self.mask_inputs is not None


class SharedFeatureVideoPredictor(SAM2VideoPredictor):
    """SAM 2 video predictor whose videos are opened once and whose image features are shared.

    Use :meth:`open_video` once per video and :meth:`init_expression_state` once per expression;
    everything else is SAM 2's API. States made by SAM 2's own ``init_state`` keep working (with
    SAM 2's per-state feature handling).

    Args:
        maskmem_dtype: dtype memory features are stored in between frames. ``None``: bfloat16 on
            CUDA (as SAM 2 does), float32 elsewhere (bfloat16 memories break the float32 CPU
            memory attention).
        **kwargs: :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` arguments.
    """

    # entries of `_track_frame`'s output kept with each frame besides SAM 2's own (a tracker's
    # per-frame scores, e.g.); small tensors only
    frame_record_keys: ClassVar[tuple[str, ...]] = ()
    # sam2 members this class overrides or calls, with their signatures (checked on construction)
    sam2_signatures: ClassVar[Mapping[str, str | None]] = SAM2_SIGNATURES

    def __init__(self, maskmem_dtype: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # dtype of stored memory features; None: bfloat16 on CUDA, float32 elsewhere
        self.maskmem_dtype = None if maskmem_dtype is None else getattr(torch, maskmem_dtype)
        report = check_sam2_compatibility(self.sam2_signatures)
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
        feature_cache_device: str = "auto",
    ) -> VideoSession:
        """Decode a video's frames once, for all of its expressions.

        Args:
            frames: the frames in video order: JPEG paths, as SAM 2 reads them, or decoded PIL
                RGB images (e.g. from an mp4); both give identical tensors for identical pixels
                (see :func:`load_frames`).
            video_id: named in logs and errors.
            offload_video_to_cpu: keep the decoded frames on the CPU.
            offload_state_to_cpu: keep each expression's tracking memories on the CPU.
            feature_cache_device: ``auto`` keeps cached image features on the model's device,
                ``cpu`` keeps them on the CPU (long videos); results are identical.
        Returns:
            the video's session; pass it to :meth:`init_expression_state`.
        """
        if feature_cache_device not in FEATURE_CACHE_DEVICES:
            raise ValueError(
                f"feature_cache_device must be one of {FEATURE_CACHE_DEVICES}, "
                f"got {feature_cache_device!r}"
            )
        device = self.device
        images, height, width = load_frames(frames, self.image_size, video_id=video_id)
        mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
        if not offload_video_to_cpu:
            images, mean, std = images.to(device), mean.to(device), std.to(device)
        images -= mean
        images /= std
        feature_device = device if feature_cache_device == "auto" else torch.device("cpu")
        logger.debug(
            "video %s: %d frames of %dx%d loaded at %d px",
            video_id,
            len(images),
            width,
            height,
            self.image_size,
        )
        return VideoSession(
            video_id=video_id,
            images=images,
            height=height,
            width=width,
            device=device,
            offload_video_to_cpu=offload_video_to_cpu,
            offload_state_to_cpu=offload_state_to_cpu,
            feature_device=feature_device,
        )

    # -- per expression -----------------------------------------------------------------------

    @torch.inference_mode()
    def init_expression_state(self, session: VideoSession) -> dict[str, Any]:
        """A fresh SAM 2 inference state over an opened video (no frame is decoded again).

        The returned dict is the one SAM 2's ``add_new_mask``, ``add_new_points_or_box`` and
        ``propagate_in_video`` expect, with the same keys as ``init_state`` makes, plus the
        session under :data:`SESSION_KEY`.
        """
        storage_device = torch.device("cpu") if session.offload_state_to_cpu else session.device
        return {
            "images": session.images,
            "num_frames": session.num_frames,
            "offload_video_to_cpu": session.offload_video_to_cpu,
            "offload_state_to_cpu": session.offload_state_to_cpu,
            "video_height": session.height,
            "video_width": session.width,
            "device": session.device,
            "storage_device": storage_device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            SESSION_KEY: session,
        }

    # -- propagation --------------------------------------------------------------------------

    @staticmethod
    def propagation_order(
        inference_state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> range:
        """The frames one :meth:`propagate_in_video` pass with these arguments yields, in order.

        By default a pass starts at the earliest prompted frame of any object and runs to the
        last frame (forward) or to frame 0 (reverse; nothing when it starts at frame 0), as in
        SAM 2. Prompts added since the last pass count, so a caller can size a per-frame progress
        bar before propagating: ``len(predictor.propagation_order(state, reverse=True))``.

        Raises:
            RuntimeError: no frame is prompted and ``start_frame_idx`` is None.
        """
        if start_frame_idx is None:
            prompted = [
                t
                for key in ("output_dict_per_obj", "temp_output_dict_per_obj")
                for outputs in inference_state[key].values()
                for t in outputs["cond_frame_outputs"]
            ]
            if not prompted:
                raise RuntimeError("no prompted frame to propagate from; add a prompt first")
            start_frame_idx = min(prompted)
        num_frames = inference_state["num_frames"]
        span = num_frames if max_frame_num_to_track is None else max_frame_num_to_track
        if reverse:
            if start_frame_idx == 0:
                return range(0)
            return range(start_frame_idx, max(start_frame_idx - span, 0) - 1, -1)
        return range(start_frame_idx, min(start_frame_idx + span, num_frames - 1) + 1)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """SAM 2's ``propagate_in_video``, computing the same masks, without a progress bar per
        pass (a MeViS run makes thousands of passes; the caller shows its own progress, one step
        per yielded frame, out of ``len(self.propagation_order(...))`` with the same arguments).

        Yields:
            ``(frame_idx, obj_ids, masks)``: ``masks`` ``[num_objects, 1, H, W] float32`` logits
            at video size, on the compute device, objects in ``obj_ids`` order.
        """
        self.propagate_in_video_preflight(inference_state)
        obj_ids = inference_state["obj_ids"]
        num_objects = self._get_obj_num(inference_state)
        order = self.propagation_order(
            inference_state, start_frame_idx, max_frame_num_to_track, reverse
        )
        for frame_idx in order:
            per_object = [
                self._propagate_object(inference_state, obj_idx, frame_idx, reverse)
                for obj_idx in range(num_objects)
            ]
            masks = torch.cat(per_object, dim=0) if num_objects > 1 else per_object[0]
            _, video_res_masks = self._get_orig_video_res_output(inference_state, masks)
            yield frame_idx, obj_ids, video_res_masks

    def _propagate_object(
        self, inference_state: dict[str, Any], obj_idx: int, frame_idx: int, reverse: bool
    ) -> torch.Tensor:
        """One object's low-resolution mask logits on ``frame_idx``, ``[1, 1, S/4, S/4]``.

        A prompted frame returns its stored output; any other frame is tracked from memory and
        its output stored for later frames.
        """
        outputs = inference_state["output_dict_per_obj"][obj_idx]
        if frame_idx in outputs["cond_frame_outputs"]:
            current_out = outputs["cond_frame_outputs"][frame_idx]
            pred_masks = current_out["pred_masks"].to(inference_state["device"], non_blocking=True)
            if self.clear_non_cond_mem_around_input:
                self._clear_obj_non_cond_mem_around_input(inference_state, frame_idx, obj_idx)
        else:
            current_out, pred_masks = self._run_single_frame_inference(
                inference_state=inference_state,
                output_dict=outputs,
                frame_idx=frame_idx,
                batch_size=1,  # objects are tracked one at a time
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            outputs["non_cond_frame_outputs"][frame_idx] = current_out
        inference_state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
        return pred_masks

    def _clear_obj_non_cond_mem_around_input(
        self, inference_state: dict[str, Any], frame_idx: int, obj_idx: int
    ) -> None:
        """Drop object ``obj_idx``'s tracked (non-conditioning) outputs within
        ``memory_temporal_stride_for_eval * num_maskmem`` frames of the prompted ``frame_idx``,
        both ways (SAM 2's ``_clear_non_cond_mem_around_input`` for one object), so that memories
        older than the prompt do not compete with it. Used when ``clear_non_cond_mem_around_input``.
        """
        radius = self.memory_temporal_stride_for_eval * self.num_maskmem
        outputs = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            outputs.pop(t, None)

    # -- image features -----------------------------------------------------------------------

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """SAM 2's per-frame features, served from the session's cache when there is one.

        Returns:
            ``(image [B, 3, S, S], backbone_out, vision_feats, vision_pos_embeds, feat_sizes)`` as
            SAM 2's: features ``[H_l * W_l, B, C_l]`` per level, ``B = batch_size``.
        """
        session: VideoSession | None = inference_state.get(SESSION_KEY)
        if session is None:
            return super()._get_image_feature(inference_state, frame_idx, batch_size)
        device = inference_state["device"]
        image = inference_state["images"][frame_idx].to(device).float().unsqueeze(0)
        cached = session.features.get(frame_idx)
        if cached is None:
            backbone_out = self.forward_image(image)
            backbone_fpn = list(backbone_out["backbone_fpn"])
            if session.pos_enc is None:
                session.pos_enc = list(backbone_out["vision_pos_enc"])
            # a blocking copy: a non-blocking one to the CPU could be read before it lands
            session.features[frame_idx] = [feat.to(session.feature_device) for feat in backbone_fpn]
        else:
            backbone_fpn = [feat.to(device, non_blocking=True) for feat in cached]
        # Expand to the number of objects, as SAM 2 does.
        expanded_backbone_out = {
            "backbone_fpn": [feat.expand(batch_size, -1, -1, -1) for feat in backbone_fpn],
            "vision_pos_enc": [pos.expand(batch_size, -1, -1, -1) for pos in session.pos_enc],
        }
        features = self._prepare_backbone_features(expanded_backbone_out)
        return (image.expand(batch_size, -1, -1, -1),) + features

    # -- one frame of one object --------------------------------------------------------------

    def _run_single_frame_inference(
        self,
        inference_state,
        output_dict,
        frame_idx,
        batch_size,
        is_init_cond_frame,
        point_inputs,
        mask_inputs,
        reverse,
        run_mem_encoder,
        prev_sam_mask_logits=None,
    ):
        """One object on one frame (SAM 2's ``add_new_*`` and :meth:`propagate_in_video` call
        it): :meth:`_track_frame`, then the output compacted as SAM 2 keeps it, with memory
        features in :meth:`_store_maskmem`'s dtype and the :attr:`frame_record_keys` entries.

        Returns:
            ``(compact output, pred_masks [1, 1, S/4, S/4] float32 logits on the compute device)``.
        """
        if batch_size != 1:
            raise ValueError(f"objects are tracked one at a time, got batch_size={batch_size}")
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("points and a mask cannot prompt the same frame together")
        obj_idx = self._obj_idx_of_output_dict(inference_state, output_dict)
        _, _, vision_feats, vision_pos_embeds, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        frame = ObjectFrame(
            obj_idx=obj_idx,
            obj_id=inference_state["obj_idx_to_id"][obj_idx],
            frame_idx=frame_idx,
            reverse=reverse,
            is_init_cond_frame=is_init_cond_frame,
            vision_feats=vision_feats,
            vision_pos_embeds=vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        current_out = self._track_frame(inference_state, frame)
        storage_device = inference_state["storage_device"]
        maskmem_features = current_out["maskmem_features"]
        if maskmem_features is not None:
            maskmem_features = self._store_maskmem(maskmem_features, storage_device)
        pred_masks_gpu = current_out["pred_masks"]
        if self.fill_hole_area > 0:
            pred_masks_gpu = fill_holes_in_mask_scores(pred_masks_gpu, self.fill_hole_area)
        compact_current_out = {
            "maskmem_features": maskmem_features,
            # the same for every frame: one copy lives in the state's constants
            "maskmem_pos_enc": self._get_maskmem_pos_enc(inference_state, current_out),
            "pred_masks": pred_masks_gpu.to(storage_device, non_blocking=True),
            # small, kept on the compute device
            "obj_ptr": current_out["obj_ptr"],
            "object_score_logits": current_out["object_score_logits"],
        }
        for key in self.frame_record_keys:
            compact_current_out[key] = current_out[key]
        return compact_current_out, pred_masks_gpu

    def _run_memory_encoder(
        self,
        inference_state,
        frame_idx,
        batch_size,
        high_res_masks,
        object_score_logits,
        is_mask_from_pts,
    ):
        """SAM 2's memory encoding of a prompted frame, storing memories in :meth:`_store_maskmem`.

        Returns:
            ``(maskmem_features [B, C_mem, H, W], maskmem_pos_enc)`` as SAM 2's.
        """
        _, _, vision_feats, _, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        maskmem_features, maskmem_pos_enc = self._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )
        maskmem_features = self._store_maskmem(maskmem_features, inference_state["storage_device"])
        maskmem_pos_enc = self._get_maskmem_pos_enc(
            inference_state, {"maskmem_pos_enc": maskmem_pos_enc}
        )
        return maskmem_features, maskmem_pos_enc

    def _store_maskmem(
        self, maskmem_features: torch.Tensor, storage_device: torch.device
    ) -> torch.Tensor:
        """Memory features ``[B, C_mem, H, W]`` as kept between frames (see ``maskmem_dtype``)."""
        dtype = self.maskmem_dtype
        if dtype is None:
            dtype = torch.bfloat16 if maskmem_features.device.type == "cuda" else torch.float32
        return maskmem_features.to(dtype).to(storage_device, non_blocking=True)

    @staticmethod
    def _obj_idx_of_output_dict(inference_state: dict[str, Any], output_dict: dict) -> int:
        """The object slot whose output dict is ``output_dict`` (SAM 2 passes only the dict)."""
        for obj_idx, obj_output_dict in inference_state["output_dict_per_obj"].items():
            if obj_output_dict is output_dict:
                return obj_idx
        raise ValueError("output_dict is not an object's output dict of this inference state")

    # -- the tracker hook ---------------------------------------------------------------------

    def _track_frame(self, inference_state: dict[str, Any], frame: ObjectFrame) -> dict[str, Any]:
        """Hook: track one object on one frame; by default SAM 2's ``track_step``.

        Called for prompted frames (while prompts are added, ``run_mem_encoder=False``) and for
        every tracked frame of :meth:`propagate_in_video`. The object's outputs so far are
        ``inference_state["output_dict_per_obj"][frame.obj_idx]`` (``{"cond_frame_outputs",
        "non_cond_frame_outputs"}``, frame index -> compact output).

        Returns:
            ``track_step``'s output dict: ``pred_masks [1, 1, S/4, S/4]`` and
            ``pred_masks_high_res [1, 1, S, S]`` float32 logits, ``obj_ptr [1, C]``,
            ``object_score_logits [1, 1]``, ``maskmem_features [1, C_mem, H, W]`` and
            ``maskmem_pos_enc`` (None without ``run_mem_encoder``), plus the
            :attr:`frame_record_keys` entries.
        """
        return self.track_step(
            frame_idx=frame.frame_idx,
            is_init_cond_frame=frame.is_init_cond_frame,
            current_vision_feats=frame.vision_feats,
            current_vision_pos_embeds=frame.vision_pos_embeds,
            feat_sizes=frame.feat_sizes,
            point_inputs=frame.point_inputs,
            mask_inputs=frame.mask_inputs,
            output_dict=inference_state["output_dict_per_obj"][frame.obj_idx],
            num_frames=inference_state["num_frames"],
            track_in_reverse=frame.reverse,
            run_mem_encoder=frame.run_mem_encoder,
            prev_sam_mask_logits=frame.prev_sam_mask_logits,
        )
