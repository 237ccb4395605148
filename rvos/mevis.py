"""MeViS-layout splits: expressions, frames, ground truth, and up-front validation.

A split folder holds::

    meta_expressions.json   {"videos": {video_id: {"frames": [frame_name, ...],
                              "expressions": {exp_id: {"exp": str, "obj_id": [...], "anno_id": [...]}}}}}
    JPEGImages/<video_id>/<frame_name>.jpg
    mask_dict.json          optional ground truth: {anno_id: [COCO RLE or null per frame]}

Ids are validated before anything is written: a video, expression or frame id that is empty or
would escape its output folder (``..``, path separators) is refused with a message naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from rvos.io import safe_component

logger = logging.getLogger(__name__)

FRAME_SUFFIX = ".jpg"
META_FILE = "meta_expressions.json"
MASK_FILE = "mask_dict.json"  # ground truth, released for train and valid_u


class DataError(ValueError):
    """A problem with the input split; the message names the video/expression/frame."""


@dataclass(frozen=True)
class Expression:
    """One referring expression of a video."""

    exp_id: str
    text: str
    anno_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Video:
    """One video of a split: its frame names in order and its expressions."""

    video_id: str
    frame_names: tuple[str, ...]
    expressions: dict[str, Expression]

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)


def _parse_expression(video_id: str, exp_id: str, entry: object) -> Expression:
    where = f"video {video_id!r}, expression {exp_id!r}"
    try:
        safe_component(exp_id, "expression id")
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    text = entry.get("exp")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the expression text is empty or not a string ({text!r})")
    anno_ids = tuple(str(a) for a in entry.get("anno_id", ()))
    # As written: ReferDINO feeds the raw text to BERT (only appending "." when it lacks one).
    return Expression(exp_id=exp_id, text=text, anno_ids=anno_ids)


def _parse_video(video_id: str, entry: object) -> Video:
    try:
        safe_component(video_id, "video id")
    except ValueError as err:
        raise DataError(str(err)) from None
    if not isinstance(entry, dict):
        raise DataError(f"video {video_id!r}: expected an object, got {type(entry).__name__}")
    frames = entry.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(f"video {video_id!r}: 'frames' is missing or empty")
    for name in frames:
        try:
            safe_component(str(name), "frame name")
        except ValueError as err:
            raise DataError(f"video {video_id!r}: {err}") from None
    if len(set(frames)) != len(frames):
        raise DataError(f"video {video_id!r}: 'frames' lists a frame twice")
    expressions = entry.get("expressions")
    if not isinstance(expressions, dict) or not expressions:
        raise DataError(f"video {video_id!r}: no expressions")
    return Video(
        video_id=video_id,
        frame_names=tuple(str(f) for f in frames),
        expressions={
            str(k): _parse_expression(video_id, str(k), v) for k, v in expressions.items()
        },
    )


class MevisSplit:
    """A MeViS-layout split rooted at ``root``.

    Args:
        root: folder with ``meta_expressions.json`` and ``JPEGImages/``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path} not found (is data.root a MeViS split folder?)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{meta_path}: not valid JSON ({err})") from None
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict) or not videos:
            raise DataError(f"{meta_path}: no 'videos'")
        self.videos: dict[str, Video] = {
            str(vid): _parse_video(str(vid), entry) for vid, entry in sorted(videos.items())
        }

    @property
    def video_ids(self) -> list[str]:
        """All video ids, sorted."""
        return list(self.videos)

    def frame_dir(self, video_id: str) -> Path:
        return self.root / "JPEGImages" / video_id

    def frame_paths(self, video_id: str) -> list[Path]:
        """The JPEG of every listed frame, in ``meta_expressions.json`` order."""
        folder = self.frame_dir(video_id)
        return [folder / f"{name}{FRAME_SUFFIX}" for name in self.videos[video_id].frame_names]

    def check_frames(self, video_id: str) -> tuple[int, int]:
        """Check that every listed frame exists and has the same size; return ``(H, W)``.

        Frame headers are read (cheap); pixel data is decoded when frames are loaded.
        Raises:
            DataError: naming the video and the missing/unreadable/odd-sized frames.
        """
        folder = self.frame_dir(video_id)
        if not folder.is_dir():
            raise DataError(f"video {video_id!r}: frame folder {folder} not found")
        paths = self.frame_paths(video_id)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"video {video_id!r}: {len(missing)} frame(s) listed in meta_expressions.json "
                f"are missing from {folder}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        listed = {p.name for p in paths}
        extra = sorted(p.name for p in folder.glob(f"*{FRAME_SUFFIX}") if p.name not in listed)
        if extra:
            logger.warning(
                "video %r: %d frame(s) on disk are not listed in meta_expressions.json and are "
                "ignored (e.g. %s)",
                video_id,
                len(extra),
                extra[0],
            )
        sizes = {}
        for path in paths:
            try:
                with Image.open(path) as image:
                    sizes[path.name] = (image.height, image.width)
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(
                    f"video {video_id!r}: frame {path.name} is unreadable ({err})"
                ) from None
        distinct = set(sizes.values())
        if len(distinct) != 1:
            raise DataError(f"video {video_id!r}: frames have different sizes {sorted(distinct)}")
        return distinct.pop()

    def load_frames(self, video_id: str) -> list[Image.Image]:
        """Decode all frames of a video as RGB PIL images, in order."""
        images = []
        for path in self.frame_paths(video_id):
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(
                    f"video {video_id!r}: frame {path.name} is unreadable ({err})"
                ) from None
        return images

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """``(H, W)`` of the video's first frame."""
        with Image.open(self.frame_paths(video_id)[0]) as image:
            return image.height, image.width

    def validate(self, video_ids: list[str] | None = None) -> None:
        """Check the frames of ``video_ids`` (all videos by default) before any work starts."""
        for video_id in video_ids if video_ids is not None else self.video_ids:
            self.check_frames(video_id)

    # -- ground truth -------------------------------------------------------------------------

    @property
    def has_ground_truth(self) -> bool:
        return (self.root / MASK_FILE).is_file()

    @cached_property
    def mask_dict(self) -> dict[str, list]:
        """``anno_id -> [COCO RLE or None per frame]`` from ``mask_dict.json``."""
        path = self.root / MASK_FILE
        if not path.is_file():
            raise DataError(f"{path} not found: this split has no ground truth")
        try:
            masks = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(masks, dict):
            raise DataError(f"{path}: expected an object mapping anno_id to per-frame RLEs")
        return masks


def gt_frame_mask(
    mask_dict: dict[str, list], anno_ids: Sequence[str], frame_idx: int, height: int, width: int
) -> np.ndarray:
    """Ground truth of one expression on one frame: the union of its ``anno_ids``' masks.

    ``mask_dict[anno_id][frame_idx]`` is a COCO RLE (``{"size": [H, W], "counts": str}``) or
    ``None`` (object absent: empty). Returns ``[H, W] bool``, column-major as pycocotools
    decodes it.
    """
    mask = None
    for anno_id in anno_ids:
        rle = mask_dict[str(anno_id)][frame_idx]
        if not rle:
            continue
        # Column-major like pycocotools' output: the union needs no transposing copies.
        decoded = mask_utils.decode(rle).astype(bool)
        if decoded.shape != (height, width):
            raise ValueError(
                f"anno_id {anno_id}, frame {frame_idx}: ground truth is {decoded.shape[1]}x"
                f"{decoded.shape[0]}, expected {width}x{height}"
            )
        mask = decoded if mask is None else mask | decoded
    return np.zeros((height, width), dtype=bool) if mask is None else mask


def load_gt_masks(
    mask_dict: dict[str, list], anno_ids: Sequence[str], num_frames: int, height: int, width: int
) -> np.ndarray:
    """Ground truth of one expression, ``[T, H, W] bool`` (see :func:`gt_frame_mask`)."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame_idx in range(num_frames):
        masks[frame_idx] = gt_frame_mask(mask_dict, anno_ids, frame_idx, height, width)
    return masks


def gt_frame_size(mask_dict: dict[str, list], anno_ids: Sequence[str]) -> tuple[int, int] | None:
    """``(H, W)`` from the first non-null RLE of ``anno_ids``; None if all frames are null."""
    for anno_id in anno_ids:
        for rle in mask_dict[str(anno_id)]:
            if rle:
                height, width = rle["size"]
                return int(height), int(width)
    return None


# ----------------------------------------------------------------------------- predictions
