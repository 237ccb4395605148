"""Across frames: query tracking (Hungarian matching) and the temporal decoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


class TemporalBlock(nn.Module):
    """Self-attention of each query over time, then a sentence-query cross-attention decoder."""

    def __init__(
        self,
        d_model: int,  # query width
        n_heads: int,  # attention heads
        dropout: float,  # dropout (inactive at inference)
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.TransformerDecoderLayer(d_model, n_heads, dropout=dropout)

    def forward(self, hs: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hs: [T, Q, C] queries (time-major); tgt: [T, Q, C] sentence features -> both updated."""
        hs = self.norm(hs + self.self_attn(hs, hs, hs)[0])
        return hs, self.decoder(tgt, hs)


class TemporalDecoder(nn.Module):
    """Stack of :class:`TemporalBlock`, each followed by ``hs = LayerNorm(hs + tgt)``."""

    def __init__(
        self,
        d_model: int,  # query width
        n_heads: int,  # attention heads
        n_layer: int,  # blocks
        dropout: float,  # dropout (inactive at inference)
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TemporalBlock(d_model, n_heads, dropout) for _ in range(n_layer))
        self.norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))

    def forward(self, hs: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """hs: [T, Q, C] queries; tgt: [T, Q, C] sentence feature per frame -> [T, Q, C]."""
        for block, norm in zip(self.layer, self.norm, strict=True):
            hs, tgt = block(hs, tgt)
            hs = norm(hs + tgt)
        return hs


def match_to_memory(memory: torch.Tensor, current: torch.Tensor) -> np.ndarray:
    """Hungarian matching on 1 - cosine similarity.

    Args:
        memory: [B, Q, C]; current: [B, Q, C].

    Returns:
        [B, Q] int64: for each memory slot, the index of the matched current query.
    """
    cos = torch.matmul(F.normalize(memory, dim=-1), F.normalize(current, dim=-1).transpose(1, 2))
    cost = (1 - cos).float().cpu()
    return np.stack([linear_sum_assignment(c)[1] for c in cost], axis=0)


def track_queries(
    hs: torch.Tensor, reference: torch.Tensor, text: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder every frame's queries to follow a running query memory.

    The memory starts as frame 0's queries; each next frame is matched to it, then the memory
    moves towards the matched queries by ``alpha * conf``, conf being each query's best text
    similarity, min-max normalised over queries.

    Args:
        hs: [T, Q, C] queries; reference: [T, Q, 4] boxes; text: [T, L, C] fused text per frame.

    Returns:
        (hs [T, Q, C], reference [T, Q, 4]) in tracked order.
    """
    hs = hs[:, None]  # [T, 1, Q, C]
    reference = reference[:, None]
    text = text[:, None]  # [T, 1, L, C]
    dim = hs.shape[-1]
    hs_tracked, ref_tracked = [hs[0]], [reference[0]]
    memory = hs[0]
    for t in range(1, hs.shape[0]):
        order = torch.tensor(match_to_memory(memory, hs[t]), device=hs.device)
        hs_t = torch.gather(hs[t], 1, order[:, :, None].expand(-1, -1, dim))
        ref_t = torch.gather(reference[t], 1, order[:, :, None].expand(-1, -1, 4))
        conf = torch.matmul(hs_t, text[t].transpose(1, 2)).max(-1)[0]
        conf_min = conf.min(1)[0][:, None]
        conf = (conf - conf_min) / (conf.max(1)[0] - conf.min(1)[0])[:, None]
        conf = conf.unsqueeze(-1)
        memory = (1 - alpha * conf) * memory + alpha * conf * hs_t
        hs_tracked.append(hs_t)
        ref_tracked.append(ref_t)
    return torch.stack(hs_tracked, 0)[:, 0], torch.stack(ref_tracked, 0)[:, 0]
