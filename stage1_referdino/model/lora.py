"""Low-rank adapters on ``nn.Linear`` layers, with the parameter names of released checkpoints.

ReferDINO checkpoints store LoRA factors unmerged (``<linear>.lora_A``, ``<linear>.lora_B``). The
model is built with :class:`LoRALinear` at those places so that the checkpoint loads strictly, and
:func:`merge_lora_` then folds the factors into the plain weights once, for inference.
"""

from __future__ import annotations

import torch
from torch import nn

# Child names that never receive an adapter (the attention output projections of
# ``nn.MultiheadAttention`` and the box heads, which are shared with modules outside the adapted
# sub-tree).
LORA_SKIPPED_NAMES = ("out_proj", "bbox_embed")


class LoRALinear(nn.Linear):
    """``nn.Linear`` with an additive low-rank update ``(lora_B @ lora_A) * scaling``.

    Unmerged, the forward adds ``x @ lora_A.T @ lora_B.T * scaling`` to the linear output;
    :func:`merge_lora_` replaces it with a plain ``nn.Linear`` holding the summed weight.
    """

    def __init__(
        self,
        in_features: int,  # input width
        out_features: int,  # output width
        rank: int,  # rank r of the update
        alpha: float = 1.0,  # update scale numerator: scaling = alpha / rank
    ) -> None:
        super().__init__(in_features, out_features)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        update = (x @ self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)) * self.scaling
        return super().forward(x) + update

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """Return a plain ``nn.Linear`` whose weight is ``W + (lora_B @ lora_A) * scaling``."""
        linear = nn.Linear(
            self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype
        )
        linear.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scaling)
        linear.bias.copy_(self.bias)
        return linear


def inject_lora_(module: nn.Module, rank: int) -> None:
    """Replace, in place, every ``nn.Linear`` below ``module`` by a :class:`LoRALinear`.

    Children whose attribute name contains one of :data:`LORA_SKIPPED_NAMES` are left alone and
    not descended into.
    """
    for name, child in module.named_children():
        if any(skipped in name for skipped in LORA_SKIPPED_NAMES):
            continue
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child.in_features, child.out_features, rank))
        else:
            inject_lora_(child, rank)


def merge_lora_(module: nn.Module) -> int:
    """Fold every :class:`LoRALinear` below ``module`` into a plain ``nn.Linear``, in place.

    Modules shared under several names are merged once. Returns the number of merged layers.
    """
    merged = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged_linear())
                merged += 1
    return merged
