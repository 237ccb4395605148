"""Bidirectional image-text attention of the encoder's fusion layers (inputs are unpadded)."""

from __future__ import annotations

import torch
from torch import nn

# Attention logits are clamped to this range (kept from the original for half precision).
LOGIT_CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    """Image tokens attend to text tokens and text tokens to image tokens, sharing the logits."""

    def __init__(
        self,
        v_dim: int,  # image token width
        l_dim: int,  # text token width
        embed_dim: int,  # attention width (all heads)
        num_heads: int,  # attention heads
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** (-0.5)
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)

    def _heads(self, x: torch.Tensor, bsz: int) -> torch.Tensor:
        """[B, N, embed_dim] -> [B * heads, N, head_dim]."""
        x = x.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2).contiguous()
        return x.view(bsz * self.num_heads, -1, self.head_dim)

    def _merge_heads(self, x: torch.Tensor, bsz: int) -> torch.Tensor:
        """[B * heads, N, head_dim] -> [B, N, embed_dim]."""
        x = x.view(bsz, self.num_heads, -1, self.head_dim).transpose(1, 2)
        return x.reshape(bsz, -1, self.embed_dim)

    def forward(self, v: torch.Tensor, lang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v: [B, Nv, v_dim], lang: [B, Nl, l_dim] -> (delta_v [B, Nv, v_dim], delta_l)."""
        bsz = v.shape[0]
        query = self._heads(self.v_proj(v) * self.scale, bsz)
        key = self._heads(self.l_proj(lang), bsz)
        value_v = self._heads(self.values_v_proj(v), bsz)
        value_l = self._heads(self.values_l_proj(lang), bsz)

        logits = torch.bmm(query, key.transpose(1, 2))  # [B * heads, Nv, Nl]
        # The shift by the global maximum spans the whole batch (all frames of a clip).
        logits = logits - logits.max()
        logits = torch.clamp(logits, min=-LOGIT_CLAMP)
        logits = torch.clamp(logits, max=LOGIT_CLAMP)

        logits_l = logits.transpose(1, 2)
        logits_l = logits_l - torch.max(logits_l, dim=-1, keepdim=True)[0]
        logits_l = torch.clamp(logits_l, min=-LOGIT_CLAMP)
        logits_l = torch.clamp(logits_l, max=LOGIT_CLAMP)

        out_v = torch.bmm(logits.softmax(dim=-1), value_l)
        out_l = torch.bmm(logits_l.softmax(dim=-1), value_v)
        return (
            self.out_v_proj(self._merge_heads(out_v, bsz)),
            self.out_l_proj(self._merge_heads(out_l, bsz)),
        )


class BiAttentionBlock(nn.Module):
    """Pre-norm bidirectional attention with per-channel layer scales ``gamma_v``/``gamma_l``."""

    def __init__(
        self,
        v_dim: int,  # image token width
        l_dim: int,  # text token width
        embed_dim: int,  # attention width (all heads)
        num_heads: int,  # attention heads
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(torch.ones(v_dim))
        self.gamma_l = nn.Parameter(torch.ones(l_dim))

    def forward(self, v: torch.Tensor, lang: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v: [B, Nv, v_dim], lang: [B, Nl, l_dim] -> updated (v, lang), same shapes.

        The residuals are added to the normalised inputs.
        """
        v = self.layer_norm_v(v)
        lang = self.layer_norm_l(lang)
        delta_v, delta_l = self.attn(v, lang)
        return v + self.gamma_v * delta_v, lang + self.gamma_l * delta_l
