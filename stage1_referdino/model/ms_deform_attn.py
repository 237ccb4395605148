"""Multi-scale deformable attention, computed with ``grid_sample`` (pure PyTorch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Upper bound on the elements of the sampled-value tensor built at once; queries are processed in
# chunks below it (every query is independent, so the result does not depend on the chunking).
MAX_SAMPLED_ELEMENTS = 1 << 24


def _sample_and_weight(
    value_per_level: list[torch.Tensor],
    grids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Sample and weight for a set of queries.

    Args:
        value_per_level: per level [B * heads, head_dim, h, w].
        grids: [B * heads, Q, levels, points, 2] sampling locations in [-1, 1].
        weights: [B * heads, 1, Q, levels * points].

    Returns:
        [B * heads, head_dim, Q].
    """
    sampled = [
        F.grid_sample(
            value_l,
            grids[:, :, level],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        for level, value_l in enumerate(value_per_level)
    ]  # per level [B * heads, head_dim, Q, points]
    return (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum with attention weights.

    Args:
        value: [B, S, heads, head_dim], S = sum of h * w over levels (level-major, row-major).
        spatial_shapes: (h, w) per level.
        sampling_locations: [B, Q, heads, levels, points, 2], (x, y) in [0, 1].
        attention_weights: [B, Q, heads, levels, points].

    Returns:
        [B, Q, heads * head_dim].
    """
    bs, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = [
        v.flatten(2).transpose(1, 2).reshape(bs * num_heads, head_dim, h, w)
        for v, (h, w) in zip(
            value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes, strict=True
        )
    ]
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # [B*heads, Q, L, P, 2]
    weights = attention_weights.transpose(1, 2).reshape(
        bs * num_heads, 1, num_queries, num_levels * num_points
    )
    per_query = bs * num_heads * head_dim * num_levels * num_points
    chunk = max(1, MAX_SAMPLED_ELEMENTS // per_query)
    out = torch.cat(
        [
            _sample_and_weight(
                value_per_level,
                grids[:, start : start + chunk],
                weights[:, :, start : start + chunk],
            )
            for start in range(0, num_queries, chunk)
        ],
        dim=-1,
    )
    return out.view(bs, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over a flattened multi-level feature map (batch-first)."""

    def __init__(
        self,
        embed_dim: int,  # query/value width
        num_heads: int,  # attention heads
        num_levels: int,  # feature levels sampled
        num_points: int,  # sampling points per head and level
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from each query around its reference point(s).

        Args:
            query: [B, Q, C] (position embedding already added).
            reference_points: [B, Q, levels, 2] points (x, y) or [B, Q, levels, 4] boxes
                (cx, cy, w, h), normalised to [0, 1].
            value: [B, S, C] flattened levels.
            spatial_shapes: (h, w) per level.

        Returns:
            [B, Q, C].
        """
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        if sum(h * w for h, w in spatial_shapes) != num_value:
            raise ValueError(f"spatial shapes {spatial_shapes} do not cover {num_value} values")
        value = self.value_proj(value).view(bs, num_value, self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points
        )
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=torch.long, device=query.device
            )
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference points must end in 2 or 4, got {reference_points.shape}")
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
