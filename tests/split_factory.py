"""Tiny MeViS-layout splits for tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_split(root: Path, videos: dict, size=(12, 16), seed=0) -> Path:
    """Write ``meta_expressions.json`` and JPEG frames.

    Args:
        videos: ``{video_id: {"frames": [names], "expressions": {exp_id: text}}}``.
    """
    rng = np.random.default_rng(seed)
    meta = {"videos": {}}
    for video_id, spec in videos.items():
        folder = root / "JPEGImages" / video_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in spec["frames"]:
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}.jpg")
        meta["videos"][video_id] = {
            "frames": list(spec["frames"]),
            "expressions": {
                exp_id: {"exp": text, "obj_id": [0], "anno_id": [f"{video_id}-{exp_id}"]}
                for exp_id, text in spec["expressions"].items()
            },
        }
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    return root
