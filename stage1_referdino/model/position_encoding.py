"""Sine position embeddings: image feature maps, text tokens and box coordinates."""

from __future__ import annotations

import math

import torch
from torch import nn

# Box-coordinate embedding (decoder queries): features per coordinate and frequency base.
BOX_EMBED_FEATS = 128
BOX_EMBED_TEMPERATURE = 10000
# Text-token embedding: features (fixed at 256, whatever the model width) and frequency base.
TEXT_EMBED_FEATS = 256
TEXT_EMBED_TEMPERATURE = 10000


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """Per-channel divisors ``temperature ** (2 * (i // 2) / num_feats)``: [num_feats] float32."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """[..., F] phases -> [..., F]: sin on even channels, cos on odd, interleaved pairwise."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSineHW(nn.Module):
    """Normalised 2-D sine embedding of an unpadded feature map (separate H/W temperatures)."""

    def __init__(
        self,
        num_pos_feats: int,  # channels per axis; output has 2 * num_pos_feats channels
        temperature_h: float,  # frequency base along the height
        temperature_w: float,  # frequency base along the width
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.scale = 2 * math.pi
        self.eps = 1e-6

    def forward(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Embedding of an ``height x width`` map: [1, 2 * num_pos_feats, height, width] float32.

        Identical for every frame (no padding), so callers expand it over the batch.
        """
        not_mask = torch.ones((1, height, width), dtype=torch.bool, device=device)
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        y_embed = y_embed / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + self.eps) * self.scale
        pos_x = x_embed[:, :, :, None] / _frequencies(
            self.num_pos_feats, self.temperature_w, device
        )
        pos_y = y_embed[:, :, :, None] / _frequencies(
            self.num_pos_feats, self.temperature_h, device
        )
        pos = torch.cat((_interleave_sin_cos(pos_y), _interleave_sin_cos(pos_x)), dim=3)
        return pos.permute(0, 3, 1, 2)


def text_position_embedding(position_ids: torch.Tensor) -> torch.Tensor:
    """Sine embedding of token positions: [B, L] int64 -> [B, L, 256] float32."""
    freqs = _frequencies(TEXT_EMBED_FEATS, TEXT_EMBED_TEMPERATURE, position_ids.device)
    phases = position_ids[..., None] * (2 * math.pi) / freqs
    return _interleave_sin_cos(phases)


def box_sine_embedding(boxes: torch.Tensor) -> torch.Tensor:
    """Sine embedding of normalised boxes: [N, B, 4] (cx, cy, w, h) -> [N, B, 512].

    Channel blocks are ordered (cy, cx, w, h), 128 channels each.
    """
    freqs = _frequencies(BOX_EMBED_FEATS, BOX_EMBED_TEMPERATURE, boxes.device)
    scale = 2 * math.pi
    embeds = [
        _interleave_sin_cos((boxes[:, :, i] * scale)[:, :, None] / freqs) for i in (1, 0, 2, 3)
    ]
    return torch.cat(embeds, dim=2)
