"""A SAM 2 video predictor that loads a video once and shares its image features.

SAM 2's :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` decodes the video in ``init_state``
and runs the image encoder on every frame it visits, keeping only the most recent frame's
features. Refining every expression of a video that way decodes the frames once per expression
and encodes each frame about twice per expression (forward, then reverse propagation).

:class:`SharedFeatureVideoPredictor` splits the per-video part from the per-expression part:

- :meth:`~SharedFeatureVideoPredictor.open_video` decodes the frames once into a
  :class:`VideoSession`, which also caches each frame's image features the first time any
  expression needs them (on the model's device, or on the CPU for long videos);
- :meth:`~SharedFeatureVideoPredictor.init_expression_state` makes a fresh SAM 2 inference state
  over a session; SAM 2's own ``add_new_mask`` / ``add_new_points_or_box`` /
  ``propagate_in_video`` then run unchanged on it.

The image encoder does not depend on prompts or memory, so sharing its output changes nothing:
masks are bit-identical to SAM 2's per-expression ``init_state`` path (tested on CPU, float32).

Memory features are stored in bfloat16 on CUDA, as SAM 2 does, and in float32 elsewhere: the
CPU memory attention cannot take bfloat16 memories next to float32 weights.

Subclasses (e.g. a motion-aware tracker) customise tracking through three small hooks:
:meth:`~SharedFeatureVideoPredictor._track_frame` (one object, one frame),
:meth:`~SharedFeatureVideoPredictor._extra_frame_outputs` (what else to keep per frame) and
:meth:`~SharedFeatureVideoPredictor._select_memory_frames` (which past frames to attend to).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import fill_holes_in_mask_scores

logger = logging.getLogger(__name__)

# Frame normalisation of SAM 2's video loader (`sam2.utils.misc.load_video_frames` defaults).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Key of the shared VideoSession inside a SAM 2 inference-state dict.
SESSION_KEY = "video_session"

FEATURE_CACHE_DEVICES = ("auto", "cpu")


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


def load_frames(
    frame_paths: Sequence[str | os.PathLike], image_size: int, *, video_id: str = ""
) -> tuple[torch.Tensor, int, int]:
    """Decode and resize frames exactly as SAM 2's JPEG-folder loader does (not normalised).

    Args:
        frame_paths: the frames in video order.
        image_size: the model's square input side ``S``.
        video_id: named in error messages.
    Returns:
        ``([T, 3, S, S] float32 in [0, 1], H, W)``.
    Raises:
        ValueError: no frames, a frame that is not 8-bit, or frames of different sizes.
        OSError: a missing or unreadable frame (the message names the video and the file).
    """
    if len(frame_paths) == 0:
        raise ValueError(f"video {video_id!r}: no frames to load")
    images = torch.zeros(len(frame_paths), 3, image_size, image_size, dtype=torch.float32)
    size: tuple[int, int] | None = None
    for index, path in enumerate(frame_paths):
        try:
            with Image.open(path) as img:
                frame_size = (img.height, img.width)
                # SAM 2 resizes with PIL's default filter for RGB images (bicubic).
                pixels = np.array(
                    img.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
                )
        except OSError as err:
            raise OSError(f"video {video_id!r}: cannot read frame {path}: {err}") from err
        if pixels.dtype != np.uint8:
            raise ValueError(f"video {video_id!r}: frame {path} is not 8-bit ({pixels.dtype})")
        if size is None:
            size = frame_size
        elif frame_size != size:
            raise ValueError(
                f"video {video_id!r}: frame {path} is {frame_size[1]}x{frame_size[0]}, "
                f"the first frame is {size[1]}x{size[0]}"
            )
        # float64 division then a float32 copy, as `sam2.utils.misc._load_img_as_tensor`.
        images[index] = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)
    assert size is not None
    return images, size[0], size[1]


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

    def __init__(self, maskmem_dtype: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # dtype of stored memory features; None: bfloat16 on CUDA, float32 elsewhere
        self.maskmem_dtype = None if maskmem_dtype is None else getattr(torch, maskmem_dtype)

    # -- per video ----------------------------------------------------------------------------

    @torch.inference_mode()
    def open_video(
        self,
        frame_paths: Sequence[str | os.PathLike],
        *,
        video_id: str = "",
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        feature_cache_device: str = "auto",
    ) -> VideoSession:
        """Decode a video's frames once, for all of its expressions.

        Args:
            frame_paths: the frames in video order (JPEGs, as SAM 2 reads them).
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
        images, height, width = load_frames(frame_paths, self.image_size, video_id=video_id)
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
    def _processing_order(
        inference_state: dict[str, Any],
        start_frame_idx: int | None,
        max_frame_num_to_track: int | None,
        reverse: bool,
    ) -> range:
        """Frames one propagation pass visits, as SAM 2 orders them.

        By default a pass starts at the earliest prompted frame of any object and runs to the
        last frame (forward) or to frame 0 (reverse; nothing when it starts at frame 0).
        """
        if start_frame_idx is None:
            start_frame_idx = min(
                t
                for outputs in inference_state["output_dict_per_obj"].values()
                for t in outputs["cond_frame_outputs"]
            )
        span = (
            inference_state["num_frames"]
            if max_frame_num_to_track is None
            else max_frame_num_to_track
        )
        if reverse:
            if start_frame_idx == 0:
                return range(0)
            return range(start_frame_idx, max(start_frame_idx - span, 0) - 1, -1)
        return range(
            start_frame_idx, min(start_frame_idx + span, inference_state["num_frames"] - 1) + 1
        )

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

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state,
        start_frame_idx=None,
        max_frame_num_to_track=None,
        reverse=False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """SAM 2's ``propagate_in_video``, computing the same masks, without a progress bar per
        pass (a MeViS run makes thousands of passes; the pipeline shows its own progress).

        Yields:
            ``(frame_idx, obj_ids, masks [num_objects, 1, H, W] logits at video size)``.
        """
        self.propagate_in_video_preflight(inference_state)
        obj_ids = inference_state["obj_ids"]
        num_objects = self._get_obj_num(inference_state)
        order = self._processing_order(
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

    # -- image features -----------------------------------------------------------------------

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """SAM 2's per-frame features, served from the session's cache when there is one."""
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
        """SAM 2's single-frame step, with the tracking call and stored outputs as hooks."""
        (_, _, current_vision_feats, current_vision_pos_embeds, feat_sizes) = (
            self._get_image_feature(inference_state, frame_idx, batch_size)
        )
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("points and a mask cannot prompt the same frame together")
        current_out = self._track_frame(
            inference_state,
            obj_idx=self._obj_idx_of_output_dict(inference_state, output_dict),
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=current_vision_feats,
            current_vision_pos_embeds=current_vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
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
        compact_current_out.update(self._extra_frame_outputs(current_out))
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
        """SAM 2's memory encoding of a prompted frame, storing memories in :meth:`_store_maskmem`."""
        _, _, current_vision_feats, _, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        maskmem_features, maskmem_pos_enc = self._encode_new_memory(
            current_vision_feats=current_vision_feats,
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

    def _store_maskmem(self, maskmem_features: torch.Tensor, storage_device) -> torch.Tensor:
        """Memory features as kept between frames (see ``maskmem_dtype``)."""
        dtype = self.maskmem_dtype
        if dtype is None:
            dtype = torch.bfloat16 if maskmem_features.device.type == "cuda" else torch.float32
        return maskmem_features.to(dtype).to(storage_device, non_blocking=True)

    @staticmethod
    def _obj_idx_of_output_dict(inference_state, output_dict) -> int | None:
        """The object slot whose output dict is ``output_dict`` (``None`` if it is not one)."""
        for obj_idx, obj_output_dict in inference_state["output_dict_per_obj"].items():
            if obj_output_dict is output_dict:
                return obj_idx
        return None

    # -- hooks --------------------------------------------------------------------------------

    def _track_frame(
        self,
        inference_state: dict[str, Any],
        *,
        obj_idx: int | None,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> dict[str, Any]:
        """Hook: track one object on one frame; by default SAM 2's ``track_step``.

        Args:
            inference_state: the expression's SAM 2 state (a subclass may keep per-object
                tracker state in it under its own key).
            obj_idx: the object's slot (``output_dict is inference_state["output_dict_per_obj"]
                [obj_idx]``).
            frame_idx: the frame being tracked; ``reverse`` tells the direction.
            current_vision_feats, current_vision_pos_embeds, feat_sizes: the frame's image
                features, ``[HW, 1, C]`` per level, and their ``(H, W)``.
            point_inputs, mask_inputs: the prompt on this frame, if any (at most one of them).
            output_dict: this object's ``{"cond_frame_outputs", "non_cond_frame_outputs"}``.
            run_mem_encoder: whether to encode the result into a memory.
            prev_sam_mask_logits: earlier logits on this frame fed back with new clicks.
        Returns:
            ``track_step``'s output dict (``pred_masks [1, 1, S/4, S/4]``, ``obj_ptr``,
            ``object_score_logits``, ``maskmem_features``, ...).
        """
        return self.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=current_vision_feats,
            current_vision_pos_embeds=current_vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=inference_state["num_frames"],
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )

    def _extra_frame_outputs(self, current_out: dict[str, Any]) -> dict[str, Any]:
        """Hook: entries of :meth:`_track_frame`'s output to keep in the per-frame memory bank.

        SAM 2 keeps ``maskmem_features``, ``maskmem_pos_enc``, ``pred_masks``, ``obj_ptr`` and
        ``object_score_logits``; return anything else :meth:`_select_memory_frames` needs
        (e.g. a mask-quality score). Default: nothing.
        """
        return {}

    def _select_memory_frames(
        self,
        *,
        frame_idx: int,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        unselected_cond_outputs: dict[int, dict[str, Any]],
        track_in_reverse: bool,
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """Hook: the past frames whose mask memories the current frame attends to.

        Default (SAM 2): the previous frame plus every ``memory_temporal_stride_for_eval``-th
        frame before it, ``num_maskmem - 1`` in all, looked up among non-conditioning outputs and
        then among conditioning frames not selected as such.

        Args:
            frame_idx: the frame being tracked.
            output_dict: the object's ``{"cond_frame_outputs", "non_cond_frame_outputs"}``.
            unselected_cond_outputs: conditioning frames beyond ``max_cond_frames_in_attn``.
            track_in_reverse: "previous" means later frames when tracking in reverse.
        Returns:
            ``(t_pos, output or None)`` pairs, ``t_pos`` in ``1 .. num_maskmem - 1`` picking the
            temporal encoding (``num_maskmem - 1`` = most recent); ``None`` entries are skipped.
        """
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        selected = []
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos  # how many frames before the current frame
            if t_rel == 1:
                # the adjacent frame, whatever the stride
                prev_frame_idx = frame_idx + t_rel if track_in_reverse else frame_idx - t_rel
            elif not track_in_reverse:
                # the nearest stride-th frame before frame_idx - 1, then further stride-th frames
                prev_frame_idx = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                prev_frame_idx = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            out = output_dict["non_cond_frame_outputs"].get(prev_frame_idx, None)
            if out is None:
                # an unselected conditioning frame among the recent ones still counts
                out = unselected_cond_outputs.get(prev_frame_idx)
            selected.append((t_pos, out))
        return selected

    # -- memory attention ---------------------------------------------------------------------

    def _prepare_memory_conditioned_features(
        self,
        frame_idx,
        is_init_cond_frame,
        current_vision_feats,
        current_vision_pos_embeds,
        feat_sizes,
        output_dict,
        num_frames,
        track_in_reverse=False,
    ):
        """SAM 2's memory attention, with the choice of memory frames in :meth:`_select_memory_frames`.

        Returns:
            ``[B, C, H, W]`` the current frame's top-level features conditioned on memory.
        """
        batch = current_vision_feats[-1].size(1)
        channels = self.hidden_dim
        height, width = feat_sizes[-1]
        device = current_vision_feats[-1].device
        if self.num_maskmem == 0:  # memory disabled (SAM on images)
            return current_vision_feats[-1].permute(1, 2, 0).view(batch, channels, height, width)

        num_obj_ptr_tokens = 0
        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                pix_feat_with_mem = current_vision_feats[-1] + self.no_mem_embed
                return pix_feat_with_mem.permute(1, 2, 0).view(batch, channels, height, width)
            # a dummy token, so that the memory attention never sees an empty memory
            to_cat_memory = [self.no_mem_embed.expand(1, batch, self.mem_dim)]
            to_cat_memory_pos_embed = [self.no_mem_pos_enc.expand(1, batch, self.mem_dim)]
        else:
            if len(output_dict["cond_frame_outputs"]) == 0:
                raise RuntimeError(f"frame {frame_idx}: tracking without a prompted frame")
            selected_cond_outputs, unselected_cond_outputs = select_closest_cond_frames(
                frame_idx, output_dict["cond_frame_outputs"], self.max_cond_frames_in_attn
            )
            # conditioning frames first, all at temporal position 0
            t_pos_and_prevs = [(0, out) for out in selected_cond_outputs.values()]
            t_pos_and_prevs += self._select_memory_frames(
                frame_idx=frame_idx,
                output_dict=output_dict,
                unselected_cond_outputs=unselected_cond_outputs,
                track_in_reverse=track_in_reverse,
            )
            to_cat_memory, to_cat_memory_pos_embed = [], []
            for t_pos, prev in t_pos_and_prevs:
                if prev is None:
                    continue
                feats = prev["maskmem_features"].to(device, non_blocking=True)
                to_cat_memory.append(feats.flatten(2).permute(2, 0, 1))
                maskmem_enc = prev["maskmem_pos_enc"][-1].to(device)
                maskmem_enc = maskmem_enc.flatten(2).permute(2, 0, 1)
                maskmem_enc = maskmem_enc + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1]
                to_cat_memory_pos_embed.append(maskmem_enc)

            if self.use_obj_ptrs_in_encoder:
                obj_ptrs, obj_pos = self._object_pointer_memory(
                    frame_idx=frame_idx,
                    output_dict=output_dict,
                    selected_cond_outputs=selected_cond_outputs,
                    unselected_cond_outputs=unselected_cond_outputs,
                    num_frames=num_frames,
                    track_in_reverse=track_in_reverse,
                    batch=batch,
                    device=device,
                )
                if obj_ptrs is not None:
                    to_cat_memory.append(obj_ptrs)
                    to_cat_memory_pos_embed.append(obj_pos)
                    num_obj_ptr_tokens = obj_ptrs.shape[0]

        memory = torch.cat(to_cat_memory, dim=0)
        memory_pos_embed = torch.cat(to_cat_memory_pos_embed, dim=0)
        pix_feat_with_mem = self.memory_attention(
            curr=current_vision_feats,
            curr_pos=current_vision_pos_embeds,
            memory=memory,
            memory_pos=memory_pos_embed,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return pix_feat_with_mem.permute(1, 2, 0).view(batch, channels, height, width)

    def _object_pointer_memory(
        self,
        *,
        frame_idx: int,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        selected_cond_outputs: dict[int, dict[str, Any]],
        unselected_cond_outputs: dict[int, dict[str, Any]],
        num_frames: int,
        track_in_reverse: bool,
        batch: int,
        device: torch.device,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SAM 2's object-pointer tokens and their temporal encodings (``None`` if there are none).

        Returns:
            ``([P, B, mem_dim] pointers, [P, B, mem_dim] encodings)``.
        """
        channels = self.hidden_dim
        max_obj_ptrs_in_encoder = min(num_frames, self.max_obj_ptrs_in_encoder)
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond_outputs = {
                t: out
                for t, out in selected_cond_outputs.items()
                if (t >= frame_idx if track_in_reverse else t <= frame_idx)
            }
        else:
            ptr_cond_outputs = selected_cond_outputs
        tpos_sign_mul = -1 if track_in_reverse else 1
        pos_and_ptrs = [
            (
                (frame_idx - t) * tpos_sign_mul
                if self.use_signed_tpos_enc_to_obj_ptrs
                else abs(frame_idx - t),
                out["obj_ptr"],
            )
            for t, out in ptr_cond_outputs.items()
        ]
        for t_diff in range(1, max_obj_ptrs_in_encoder):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = output_dict["non_cond_frame_outputs"].get(t, unselected_cond_outputs.get(t))
            if out is not None:
                pos_and_ptrs.append((t_diff, out["obj_ptr"]))
        if not pos_and_ptrs:
            return None, None
        pos_list, ptrs_list = zip(*pos_and_ptrs, strict=True)
        obj_ptrs = torch.stack(ptrs_list, dim=0)
        if self.add_tpos_enc_to_obj_ptrs:
            t_diff_max = max_obj_ptrs_in_encoder - 1
            tpos_dim = channels if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            obj_pos = torch.tensor(pos_list).to(device=device, non_blocking=True)
            obj_pos = get_1d_sine_pe(obj_pos / t_diff_max, dim=tpos_dim)
            obj_pos = self.obj_ptr_tpos_proj(obj_pos)
            obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, self.mem_dim)
        else:
            obj_pos = obj_ptrs.new_zeros(len(pos_list), batch, self.mem_dim)
        if self.mem_dim < channels:
            # split each pointer into channels // mem_dim tokens
            obj_ptrs = obj_ptrs.reshape(-1, batch, channels // self.mem_dim, self.mem_dim)
            obj_ptrs = obj_ptrs.permute(0, 2, 1, 3).flatten(0, 1)
            obj_pos = obj_pos.repeat_interleave(channels // self.mem_dim, dim=0)
        return obj_ptrs, obj_pos
