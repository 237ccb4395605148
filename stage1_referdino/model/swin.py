"""Swin Transformer backbone (inference), with the parameter names of ReferDINO checkpoints.

Outputs one feature map per stage (strides 4, 8, 16, 32), each after its own LayerNorm
(``norm0`` ... ``norm3``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Named Swin variants of the released configurations (``backbone:`` in the YAML).
SWIN_VARIANTS: dict[str, dict] = {
    "swin_T_224_1k": dict(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7
    ),
    "swin_B_224_22k": dict(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7
    ),
    "swin_B_384_22k": dict(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12
    ),
    "swin_L_224_22k": dict(
        embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=7
    ),
    "swin_L_384_22k": dict(
        embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12
    ),
}
# Value added to attention logits between tokens of different regions in shifted windows.
SHIFTED_WINDOW_MASK_VALUE = -100.0


def swin_hyperparameters(backbone: str | dict) -> dict:
    """Swin hyper-parameters from a variant name (``swin_B_384_22k``) or an explicit dict.

    Returns ``embed_dim, depths, num_heads, window_size, pretrain_img_size``.
    """
    if isinstance(backbone, str):
        if backbone not in SWIN_VARIANTS:
            raise ValueError(f"unknown Swin backbone {backbone!r}; known: {sorted(SWIN_VARIANTS)}")
        params = dict(SWIN_VARIANTS[backbone])
        params["pretrain_img_size"] = int(backbone.split("_")[-2])
        return params
    required = {"embed_dim", "depths", "num_heads", "window_size"}
    missing = required - set(backbone)
    unknown = set(backbone) - required - {"pretrain_img_size"}
    if missing or unknown:
        raise ValueError(
            f"backbone dict needs {sorted(required)} (+ optional pretrain_img_size); "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    params = dict(backbone)
    params.setdefault("pretrain_img_size", 224)
    return params


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window_size) -> [B * nW, window_size, window_size, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * nW, ws, ws, C] -> [B, H, W, C]."""
    b = int(windows.shape[0] / (h * w / window_size / window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class Mlp(nn.Module):
    """Two-layer GELU MLP of a Swin block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:  # dim: in/out width; hidden_dim: inner
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim]."""
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(
        self,
        dim: int,  # token width
        window_size: int,  # window side, in tokens
        num_heads: int,  # attention heads
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) * (2 * window_size - 1), num_heads)
        )
        self.register_buffer("relative_position_index", self._relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    @staticmethod
    def _relative_position_index(window_size: int) -> torch.Tensor:
        """Index into the bias table for each (query, key) pair: [ws*ws, ws*ws] int64."""
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        relative[:, :, 0] += window_size - 1
        relative[:, :, 1] += window_size - 1
        relative[:, :, 0] *= 2 * window_size - 1
        return relative.sum(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] additive or None -> [B * nW, N, C]."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(b_ // n_windows, n_windows, self.num_heads, n, n)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention block with an MLP, pre-norm residuals."""

    def __init__(
        self,
        dim: int,  # token width
        num_heads: int,  # attention heads
        window_size: int,  # window side, in tokens
        shift_size: int,  # cyclic shift (0 for regular windows)
        mlp_ratio: float = 4.0,  # MLP hidden width / dim
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, h * w, C]; attn_mask: [nW, N, N] for shifted windows -> [B, h * w, C]."""
        b, _, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = attn_mask
        else:
            mask = None
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if pad_r > 0 or pad_b > 0:
            x = x[:, :h, :w, :].contiguous()
        x = shortcut + x.view(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 patch merging: halves the resolution, doubles the width."""

    def __init__(self, dim: int) -> None:  # dim: input token width
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: [B, h * w, C] -> [B, ceil(h/2) * ceil(w/2), 2C]."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 == 1 or w % 2 == 1:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]],
            -1,
        )
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shifted_window_mask(
    h: int, w: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive mask keeping attention inside regions after the cyclic shift: [nW, N, N]."""
    hp = -(-h // window_size) * window_size
    wp = -(-w // window_size) * window_size
    img_mask = torch.zeros((1, hp, wp, 1), device=device)
    slices = (
        slice(0, -window_size),
        slice(-window_size, -shift_size),
        slice(-shift_size, None),
    )
    region = 0
    for hs in slices:
        for wsl in slices:
            img_mask[:, hs, wsl, :] = region
            region += 1
    mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, SHIFTED_WINDOW_MASK_VALUE).masked_fill(mask == 0, 0.0)


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular/shifted windows, then merging."""

    def __init__(
        self,
        dim: int,  # token width of this stage
        depth: int,  # number of blocks
        num_heads: int,  # attention heads
        window_size: int,  # window side, in tokens
        downsample: bool,  # end with patch merging (all stages but the last)
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, h * w, C] -> (stage output [B, h * w, C], input of the next stage)."""
        mask = shifted_window_mask(h, w, self.window_size, self.shift_size, x.device)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x, h, w)


class PatchEmbed(nn.Module):
    """4x4 patch embedding (conv) with a LayerNorm; pads the image to a multiple of 4."""

    def __init__(self, embed_dim: int, patch_size: int = 4, in_chans: int = 3) -> None:
        super().__init__()  # embed_dim: output width; patch_size: patch side; in_chans: image ch.
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> [B, embed_dim, ceil(H/4), ceil(W/4)]."""
        _, _, h, w = x.shape
        p = self.patch_size
        if w % p != 0:
            x = F.pad(x, (0, p - w % p))
        if h % p != 0:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        hh, ww = x.shape[2], x.shape[3]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).view(-1, self.embed_dim, hh, ww)


class SwinTransformer(nn.Module):
    """Swin backbone returning the normalised output of every stage."""

    def __init__(
        self,
        embed_dim: int,  # width of stage 0 (doubles at each stage)
        depths: list[int],  # blocks per stage
        num_heads: list[int],  # attention heads per stage
        window_size: int,  # window side, in tokens
        pretrain_img_size: int = 224,  # pre-training resolution (informative only: no abs. pos.)
    ) -> None:
        super().__init__()
        self.pretrain_img_size = pretrain_img_size
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(embed_dim)
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.layers = nn.ModuleList(
            [
                BasicLayer(
                    self.num_features[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    downsample=i < self.num_layers - 1,
                )
                for i in range(self.num_layers)
            ]
        )
        for i in range(self.num_layers):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] -> per stage i: [B, embed_dim * 2**i, H / 2**(i+2), W / 2**(i+2)]."""
        x = self.patch_embed(x)
        h, w = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            h, w = (h + 1) // 2, (w + 1) // 2
        return outs
