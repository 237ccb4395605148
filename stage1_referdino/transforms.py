"""Input pipeline: PIL frames -> normalised float tensor (as ReferDINO's inference scripts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image

# ImageNet channel statistics used by the Swin backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_frame(image: Image.Image, short_side: int) -> torch.Tensor:
    """One RGB image -> [3, H, W] float32, shorter side resized to ``short_side``.

    torchvision ``Resize(short_side)`` (bilinear, antialiased), ``ToTensor``, ``Normalize``.
    """
    image = TF.resize(image, short_side)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def preprocess(images: Sequence[Image.Image], short_side: int = 360) -> torch.Tensor:
    """RGB frames of one video -> [T, 3, H, W] float32 network input.

    Raises:
        ValueError: no frames, or frames that do not resize to a common size.
    """
    if len(images) == 0:
        raise ValueError("no frames to preprocess")
    frames = [preprocess_frame(img.convert("RGB"), short_side) for img in images]
    sizes = {tuple(f.shape[1:]) for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"frames resize to different sizes {sorted(sizes)}")
    return torch.stack(frames, 0)
