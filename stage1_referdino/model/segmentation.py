"""Pixel decoder: an FPN from the stride-32 encoder memory up to stride 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Groups of every GroupNorm in the pixel decoder.
PIXEL_DECODER_GROUPS = 8


class FPNSpatialDecoder(nn.Module):
    """Top-down FPN producing the per-pixel mask features (``mask_dim`` channels, stride 4)."""

    def __init__(
        self,
        context_dim: int,  # channels of the coarsest input (encoder memory)
        fpn_dims: list[int],  # channels of the skip inputs, coarse to fine (2 or 3 of them)
        mask_dim: int,  # output channels
    ) -> None:
        super().__init__()
        inter = [context_dim // 2**i for i in range(5)]
        self.lay1 = nn.Conv2d(context_dim, inter[0], 3, padding=1)
        self.gn1 = nn.GroupNorm(PIXEL_DECODER_GROUPS, inter[0])
        self.lay2 = nn.Conv2d(inter[0], inter[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(PIXEL_DECODER_GROUPS, inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(PIXEL_DECODER_GROUPS, inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(PIXEL_DECODER_GROUPS, inter[3])
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.add_extra_layer = len(fpn_dims) == 3
        if self.add_extra_layer:
            self.adapter3 = nn.Conv2d(fpn_dims[2], inter[3], 1)
            self.lay5 = nn.Conv2d(inter[3], inter[4], 3, padding=1)
            self.gn5 = nn.GroupNorm(PIXEL_DECODER_GROUPS, inter[4])
            self.out_lay = nn.Conv2d(inter[4], mask_dim, 3, padding=1)
        else:
            self.out_lay = nn.Conv2d(inter[3], mask_dim, 3, padding=1)

    @staticmethod
    def _merge(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Nearest-upsample ``x`` to ``skip``'s size and add."""
        return skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest")

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """x: [B, context_dim, h32, w32]; skips: coarse to fine -> [B, mask_dim, h4, w4]."""
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        x = F.relu(self.gn3(self.lay3(self._merge(x, self.adapter1(skips[0])))))
        x = F.relu(self.gn4(self.lay4(self._merge(x, self.adapter2(skips[1])))))
        if self.add_extra_layer:
            x = F.relu(self.gn5(self.lay5(self._merge(x, self.adapter3(skips[2])))))
        return self.out_lay(x)
