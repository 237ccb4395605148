"""Generated inputs of the benchmarks and the GPU check: a clip, sentences, frame sizes.

Light on purpose (numpy and Pillow): ``gpu_check.py`` parses its arguments with it before
anything else is imported.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

# Sentences of the generated expressions (cycled when more are asked for).
SENTENCES = (
    "the child sitting on the bed",
    "a kid moving to the left. then jumping?",
    "the white cup on the table",
    "the person who walks away first",
    "the small dog running towards the door",
    "the boy that stopped and turned around",
    "the woman standing still behind the chair",
    "the red ball on the floor",
)


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (a command-line frame size) -> ``(height, width)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 1280x720, got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return height, width


def synthetic_clip(
    num_frames: int, height: int, width: int, *, num_objects: int = 3, seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """A generated clip: ``num_objects`` coloured ellipses moving over a noisy gradient.

    Returns:
        ``(frames, masks)``: ``num_frames`` RGB images of ``width x height`` and the objects'
        ``[T, num_objects, H, W] bool`` masks.
    """
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    ones = np.ones((height, width), dtype=np.float32)
    background = np.stack(
        [(rows * 160 + cols * 40) * ones, cols * 160 * ones, (80 + rows * 60) * ones], axis=-1
    )
    start = rng.uniform(0.2, 0.8, (num_objects, 2))  # centre (y, x), fraction of the frame
    velocity = rng.uniform(-0.3, 0.3, (num_objects, 2)) / max(num_frames, 1)
    radii = rng.uniform(0.08, 0.2, (num_objects, 2))
    colours = rng.integers(0, 256, (num_objects, 3))
    frames, masks = [], np.zeros((num_frames, num_objects, height, width), dtype=bool)
    for t in range(num_frames):
        pixels = background + rng.normal(0, 8, background.shape)
        for k in range(num_objects):
            cy, cx = np.clip(start[k] + velocity[k] * t, 0.1, 0.9)
            inside = ((rows - cy) / radii[k, 0]) ** 2 + ((cols - cx) / radii[k, 1]) ** 2 <= 1
            masks[t, k] = inside
            pixels[inside] = colours[k]
        frames.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return frames, masks
