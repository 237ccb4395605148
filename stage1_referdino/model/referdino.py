"""ReferDINO for inference: video + referring expression -> per-frame query scores, boxes, masks.

The image backbone does not depend on the expression, so inference is split in two:
:meth:`ReferDINO.encode_video` (Swin, input projections, position embeddings; once per video) and
:meth:`ReferDINO.infer_features` (everything else; once per expression).
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import BertModel, PreTrainedTokenizerBase

from .lora import inject_lora_
from .position_encoding import PositionEmbeddingSineHW, box_sine_embedding, text_position_embedding
from .swin import SwinTransformer
from .temporal import TemporalDecoder, track_queries
from .text_encoder import run_bert, tokenize
from .transformer import (
    MLP,
    Transformer,
    inverse_sigmoid,
    token_similarity,
)

logger = logging.getLogger(__name__)

# Groups of the GroupNorm after every input projection.
INPUT_PROJ_GROUPS = 32
# Backbone stages fed to the transformer (the last three: strides 8, 16, 32).
NUM_BACKBONE_LEVELS = 3


@dataclass
class ClipFeatures:
    """Expression-independent features of one clip of ``t`` frames (network input H x W)."""

    srcs: list[torch.Tensor]  # per level [t, hidden_dim, h, w], strides 8, 16, 32, 64
    pos: list[torch.Tensor]  # per level [1, hidden_dim, h, w] sine embedding (same every frame)
    stride4: torch.Tensor  # [t, C0, H/4, W/4] first backbone stage (after norm0)

    @property
    def num_frames(self) -> int:
        """Number of frames ``t`` of the clip."""
        return self.stride4.shape[0]

    def to(self, device: torch.device | str) -> ClipFeatures:
        """A copy on ``device`` (no copy for tensors already there)."""
        return ClipFeatures(
            srcs=[s.to(device) for s in self.srcs],
            pos=[p.to(device) for p in self.pos],
            stride4=self.stride4.to(device),
        )


@dataclass
class VideoFeatures:
    """Output of :meth:`ReferDINO.encode_video`: backbone features of a video, per clip."""

    clips: list[ClipFeatures] = field(default_factory=list)  # consecutive clips, in frame order
    image_size: tuple[int, int] = (0, 0)  # network input (H, W)

    @property
    def num_frames(self) -> int:
        """Total number of frames T."""
        return sum(c.num_frames for c in self.clips)


class ReferDINO(nn.Module):
    """ReferDINO inference model; submodule names follow the released checkpoints."""

    def __init__(
        self,
        *,
        backbone: SwinTransformer,  # image backbone (checkpoint prefix backbone.0)
        position_embedding: PositionEmbeddingSineHW,  # image sine position embedding
        transformer: Transformer,  # encoder + two-stage selection + decoder
        bert: BertModel,  # text encoder (checkpoint prefix bert)
        tokenizer: PreTrainedTokenizerBase,  # BERT tokenizer matching ``bert``
        pixel_decoder: nn.Module,  # FPN producing stride-4 mask features
        mask_decoder: nn.ModuleList,  # deformable decoder layers refining the mask embeddings
        num_feature_levels: int,  # transformer feature levels (3 backbone + extra)
        nheads: int,  # attention heads of the temporal decoder
        dec_pred_bbox_embed_share: bool,  # one box head shared by all decoder layers
        two_stage_bbox_embed_share: bool,  # proposal box head = decoder box head
        temporal_layer: int,  # temporal decoder blocks
        tracking_alpha: float,  # query-memory update rate of the tracking
        dropout: float,  # temporal decoder dropout (inactive at inference)
        enc_lora: bool,  # the checkpoint has LoRA factors on the encoder's Linear layers
        dec_lora: bool,  # the checkpoint has LoRA factors on the decoder's Linear layers
        lora_rank: int,  # LoRA rank
        sub_sentence_present: bool,  # BERT attention restricted to sub-sentences
        max_text_len: int,  # tokens kept per expression
        clip_len: int,  # frames per clip (backbone/transformer/mask decoder batch)
        autocast_dtype: torch.dtype | None = None,  # CUDA mixed precision (None: float32)
    ) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        self.hidden_dim = hidden_dim
        self.transformer = transformer
        self.bert = bert
        self.tokenizer = tokenizer
        self.feat_map = nn.Linear(bert.config.hidden_size, hidden_dim)
        self.backbone = nn.ModuleList([backbone, position_embedding])
        self.input_proj = self._input_projections(
            backbone.num_features, hidden_dim, num_feature_levels
        )

        num_dec = transformer.num_decoder_layers
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        if dec_pred_bbox_embed_share:
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_dec)
        else:
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_dec))
        transformer.decoder.bbox_embed = self.bbox_embed
        transformer.enc_out_bbox_embed = (
            bbox_embed if two_stage_bbox_embed_share else copy.deepcopy(bbox_embed)
        )
        if enc_lora:
            inject_lora_(transformer.encoder, lora_rank)
        if dec_lora:
            inject_lora_(transformer.decoder, lora_rank)
        self.ref_point_head = transformer.decoder.ref_point_head

        self.pixel_decoder = pixel_decoder
        self.mask_decoder = mask_decoder
        temporal_decoder = TemporalDecoder(hidden_dim, nheads, temporal_layer, dropout)
        self.temporal_decoder = nn.ModuleList([temporal_decoder] * num_dec)

        self.tracking_alpha = tracking_alpha
        self.sub_sentence_present = sub_sentence_present
        self.max_text_len = max_text_len
        self.clip_len = clip_len
        self.autocast_dtype = autocast_dtype

    @staticmethod
    def _input_projections(
        num_channels: list[int], hidden_dim: int, num_feature_levels: int
    ) -> nn.ModuleList:
        """1x1 conv + GroupNorm per backbone level, then stride-2 3x3 convs for extra levels."""
        in_channels = num_channels[-NUM_BACKBONE_LEVELS:]
        projections = [
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(INPUT_PROJ_GROUPS, hidden_dim))
            for c in in_channels
        ]
        channels = in_channels[-1]
        for _ in range(num_feature_levels - NUM_BACKBONE_LEVELS):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(channels, hidden_dim, 3, stride=2, padding=1),
                    nn.GroupNorm(INPUT_PROJ_GROUPS, hidden_dim),
                )
            )
            channels = hidden_dim
        return nn.ModuleList(projections)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.feat_map.weight.device

    def _autocast(self):
        """Mixed-precision context: only on CUDA and only with ``autocast_dtype`` set."""
        if self.autocast_dtype is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ video (expression-free)

    def _encode_clip(self, frames: torch.Tensor) -> ClipFeatures:
        """frames: [t, 3, H, W] normalised -> :class:`ClipFeatures` on the model device."""
        swin, position_embedding = self.backbone[0], self.backbone[1]
        maps = swin(frames)
        levels = maps[-NUM_BACKBONE_LEVELS:]
        srcs = [proj(x) for proj, x in zip(self.input_proj[: len(levels)], levels, strict=True)]
        for extra in range(len(levels), len(self.input_proj)):
            source = maps[-1] if extra == len(levels) else srcs[-1]
            srcs.append(self.input_proj[extra](source))
        pos = [position_embedding(s.shape[2], s.shape[3], s.device).to(s.dtype) for s in srcs]
        return ClipFeatures(srcs=srcs, pos=pos, stride4=maps[0])

    @torch.inference_mode()
    def encode_video(
        self,
        video: torch.Tensor,
        *,
        storage_device: torch.device | str | None = None,
    ) -> VideoFeatures:
        """Expression-independent features of a video, computed clip by clip.

        Args:
            video: [T, 3, H, W] float32, ImageNet-normalised (see ``preprocess``); any device.
            storage_device: where to keep the features (e.g. ``"cpu"`` for long videos on a GPU);
                default: the model device.

        Returns:
            :class:`VideoFeatures` with ceil(T / clip_len) clips.
        """
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
        storage = torch.device(storage_device) if storage_device is not None else self.device
        feats = VideoFeatures(image_size=(video.shape[2], video.shape[3]))
        with self._autocast():
            for start in range(0, video.shape[0], self.clip_len):
                frames = video[start : start + self.clip_len].to(self.device)
                feats.clips.append(self._encode_clip(frames).to(storage))
        return feats

    # ------------------------------------------------------------------ per expression

    def _encode_text(self, expression: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expression -> (tokens [1, L, C], position embedding [1, L, 256], blocked [1, L, L])."""
        tokens = tokenize(self.tokenizer, expression, self.max_text_len, self.device)
        text = self.feat_map(run_bert(self.bert, tokens, self.sub_sentence_present))
        text_pos = text_position_embedding(tokens.position_ids)
        return text, text_pos, ~tokens.self_attention_mask

    def _query_positions(self, reference: torch.Tensor) -> torch.Tensor:
        """Boxes [T, Q, 4] -> query position embedding [T, Q, C]."""
        return self.ref_point_head(box_sine_embedding(reference))

    def _decode_masks(
        self,
        clip: ClipFeatures,
        memory_maps: list[torch.Tensor],
        mask_embed: torch.Tensor,
        query_pos: torch.Tensor,
        reference: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits of one clip.

        Args:
            clip: the clip's features (for the stride-4 map).
            memory_maps: encoder memory of the clip at strides 8, 16, 32, [t, C, h, w] each.
            mask_embed, query_pos: [Q, t, C]; reference: [Q, t, 1, 4]; text: [t, L, C].

        Returns:
            [t, Q, H/4, W/4] mask logits.
        """
        mask_features = self.pixel_decoder(
            memory_maps[-1], [memory_maps[1], memory_maps[0], clip.stride4]
        )
        memory = mask_features.flatten(2).transpose(1, 2)  # [t, HW, C]
        spatial_shapes = [(mask_features.shape[2], mask_features.shape[3])]
        for layer in self.mask_decoder:
            mask_embed, _ = layer(mask_embed, query_pos, reference, text, memory, spatial_shapes)
        return torch.einsum("bqc,bchw->bqhw", mask_embed.transpose(0, 1), mask_features)

    @torch.inference_mode()
    def infer_features(self, feats: VideoFeatures, expression: str) -> dict[str, torch.Tensor]:
        """Run one expression on precomputed video features.

        Args:
            feats: output of :meth:`encode_video` (any storage device).
            expression: the referring sentence ("." is appended if missing).

        Returns:
            ``pred_logits`` [T, Q, 1], ``pred_boxes`` [T, Q, 4] (normalised cx, cy, w, h) and
            ``pred_masks`` [T, Q, H/4, W/4] (mask logits), float32 on the model device;
            Q = queries kept by the decoder's pruning.
        """
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"expression must be a non-empty string, got {expression!r}")
        if not feats.clips:
            raise ValueError("no frames in the video features")
        with self._autocast():
            return self._infer_features(feats, expression)

    def _infer_features(self, feats: VideoFeatures, expression: str) -> dict[str, torch.Tensor]:
        """Body of :meth:`infer_features`: transformer per clip, then tracking, temporal decoder,
        heads, and the mask decoder per clip. Outputs as there."""
        text, text_pos, text_blocked = self._encode_text(expression)
        hs, reference, fused_text, memory = [], [], [], []
        for clip_cpu in feats.clips:
            clip = clip_cpu.to(self.device)
            t = clip.num_frames
            out = self.transformer(
                clip.srcs,
                [p.expand(t, -1, -1, -1) for p in clip.pos],
                text.repeat(t, 1, 1),
                text_pos.repeat(t, 1, 1),
                text_blocked.repeat(t, 1, 1),
            )
            hs.append(out["hs"])
            reference.append(out["reference"])
            fused_text.append(out["text"])
            storage = clip_cpu.stride4.device
            memory.append([m.to(storage) for m in out["memory_maps"]])
        hs = torch.cat(hs, 0)  # [T, Q, C]
        reference = torch.cat(reference, 0)  # [T, Q, 4]
        fused_text = torch.cat(fused_text, 0)  # [T, L, C]

        hs, reference = track_queries(hs, reference, fused_text, self.tracking_alpha)
        sentence = fused_text[:, None, 0].expand(-1, hs.shape[1], -1).contiguous()
        hs = self.temporal_decoder[-1](hs, sentence)

        logits = token_similarity(hs, fused_text).max(-1, keepdim=True)[0]
        boxes = (self.bbox_embed[-1](hs) + inverse_sigmoid(reference)).sigmoid()

        query_pos = self._query_positions(reference).transpose(0, 1)  # [Q, T, C]
        mask_refs = reference.transpose(0, 1)[:, :, None, :]  # [Q, T, 1, 4]
        mask_embed = hs.transpose(0, 1)  # [Q, T, C]
        masks, start = [], 0
        for clip_cpu, clip_memory in zip(feats.clips, memory, strict=True):
            clip = clip_cpu.to(self.device)
            frames = slice(start, start + clip.num_frames)
            masks.append(
                self._decode_masks(
                    clip,
                    [m.to(self.device) for m in clip_memory],
                    mask_embed[:, frames],
                    query_pos[:, frames],
                    mask_refs[:, frames],
                    fused_text[frames],
                )
            )
            start += clip.num_frames
        return {
            "pred_logits": logits.float(),
            "pred_boxes": boxes.float(),
            "pred_masks": torch.cat(masks, 0).float(),
        }

    def infer(self, video: torch.Tensor, expression: str) -> dict[str, torch.Tensor]:
        """``infer_features(encode_video(video), expression)``; see both."""
        return self.infer_features(self.encode_video(video), expression)
