"""Tiny splits in the real file layouts of the benchmarks other than MeViS v1.

The metadata mirrors the released files' structure:

- Ref-YouTube-VOS: ``meta_expressions/valid/meta_expressions.json`` lists the valid *and* test
  videos, each ``{"expressions": {exp_id: {"exp": text}}, "frames": [...]}``;
  ``meta_expressions/test/meta_expressions.json`` lists the test ones; frames in
  ``valid/JPEGImages/<video>/<frame>.jpg``.
- Ref-DAVIS17 (converted to the Ref-YouTube-VOS layout by the script ReferDINO's
  ``assets/DATA.md`` runs): per video ``{"expressions": {"0": {"exp", "obj_id": "1"}, ...},
  "frames": [...]}`` with, per object, four consecutive expressions (annotator 1 first-frame,
  annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video); frames in
  ``valid/JPEGImages``, DAVIS ground truth in ``valid/Annotations/<video>/<frame>.png`` (indexed).
- MeViS v2: the MeViS layout; no-target expressions have an empty ``anno_id`` list; extra fields
  (audio, boxes) that the pipeline ignores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from rvos.davis import davis_palette

ANNOTATORS = 4


def write_frames(folder: Path, names, size, rng) -> None:
    """Random RGB JPEGs ``<folder>/<name>.jpg`` of ``size = (H, W)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg")


def write_ref_youtube_vos(root: Path, valid: dict, test: dict, size=(48, 64), seed=0) -> Path:
    """A Ref-YouTube-VOS folder.

    Args:
        valid: ``{video_id: {"frames": [...], "expressions": {exp_id: text}}}``, the valid videos
            (frames written).
        test: the same for test videos: listed in both metadata files, no frames.
    """
    rng = np.random.default_rng(seed)
    videos = {}
    for video_id, spec in {**valid, **test}.items():
        videos[video_id] = {
            "expressions": {e: {"exp": text} for e, text in spec["expressions"].items()},
            "frames": list(spec["frames"]),
        }
    for video_id, spec in valid.items():
        write_frames(root / "valid" / "JPEGImages" / video_id, spec["frames"], size, rng)
    for split, listed in (("valid", videos), ("test", {v: videos[v] for v in test})):
        path = root / "meta_expressions" / split / "meta_expressions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"videos": listed}))
    return root


def encode_labels(labels: np.ndarray) -> Image.Image:
    """``[H, W]`` labels as an indexed PNG image with the DAVIS palette."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette())
    return image


def write_ref_davis17(root: Path, videos: dict, size=(48, 64), seed=0) -> Path:
    """A Ref-DAVIS17 folder in the converted layout.

    Args:
        videos: ``{video_id: {"frames": [...], "objects": [[4 sentences], ...],
            "labels": [T, H, W] ground-truth labels (0 background, i object i, 255 void)}}``.
    """
    rng = np.random.default_rng(seed)
    meta = {}
    for video_id, spec in videos.items():
        write_frames(root / "valid" / "JPEGImages" / video_id, spec["frames"], size, rng)
        expressions = {}
        for obj_idx, sentences in enumerate(spec["objects"]):
            assert len(sentences) == ANNOTATORS
            for sentence in sentences:
                expressions[str(len(expressions))] = {"exp": sentence, "obj_id": str(obj_idx + 1)}
        meta[video_id] = {"expressions": expressions, "frames": list(spec["frames"])}
        gt_dir = root / "valid" / "Annotations" / video_id
        gt_dir.mkdir(parents=True, exist_ok=True)
        for name, labels in zip(spec["frames"], spec["labels"], strict=True):
            encode_labels(labels).save(gt_dir / f"{name}.png")
    path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"videos": meta}))
    return root


def rle(mask: np.ndarray) -> dict:
    """A COCO RLE as ``mask_dict.json`` stores it."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode()}


def write_mevis_v2(root: Path, videos: dict, size=(48, 64), seed=0) -> Path:
    """A MeViS v2 split with ground truth.

    Args:
        videos: ``{video_id: {"frames": [...], "expressions": {exp_id: (text, gt)}}}`` where
            ``gt`` is a ``[T, H, W] bool`` target or ``None`` (no target: ``anno_id == []``).
    """
    rng = np.random.default_rng(seed)
    meta, mask_dict = {}, {}
    for video_id, spec in videos.items():
        write_frames(root / "JPEGImages" / video_id, spec["frames"], size, rng)
        expressions = {}
        for exp_id, (text, gt) in spec["expressions"].items():
            anno_ids = []
            if gt is not None:
                anno_id = str(len(mask_dict))
                mask_dict[anno_id] = [rle(frame) if frame.any() else None for frame in gt]
                anno_ids = [anno_id]
            expressions[exp_id] = {
                "exp": text,
                "obj_id": [int(a) for a in anno_ids],
                "anno_id": anno_ids,
                "audio": f"audio/{video_id}_{exp_id}.wav",  # v2 extra fields: ignored
                "boxes": [[0, 0, 1, 1]] if anno_ids else [],
            }
        meta[video_id] = {"frames": list(spec["frames"]), "expressions": expressions}
    (root / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root
