"""Small submission archives written by the pipeline's own writers, read back member by member,
and the command line run in this process (the ensemble and bad-case tests)."""

from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from rvos.archive import AnnotatorLabelPngs, build_archive_writer, write_archive
from rvos.archive_reader import decode_png
from rvos.davis import decode_label_png

# video_id -> group (exp_id, or annotator k for label archives) -> [T, H, W] masks or labels
Masks = dict[str, dict[str, np.ndarray]]


def _load(masks: Masks, frames: dict[str, list[str]], video_id: str):
    return frames[video_id], masks[video_id]


def write_mask_archive(path: Path, masks: Masks, frames: dict[str, list[str]], layout="mevis"):
    """An archive of bool masks in an expression layout (``mevis``, ``ref_youtube_vos``)."""
    expected = {v: dict.fromkeys(groups, frames[v]) for v, groups in masks.items()}
    write_archive(
        path,
        partial(_load, masks, frames),
        expected,
        jobs=1,
        writer=build_archive_writer(layout, {}),
    )
    return path


def write_label_archive(path: Path, labels: Masks, frames: dict[str, list[str]]) -> Path:
    """A Ref-DAVIS17 archive: ``labels`` are ``{video: {str(k): [T, H, W] uint8}}`` per
    annotator ``k``, written through the pipeline's writer (one object per label 1..max)."""
    masks: Masks = {}
    groups: dict[str, dict[int, list[str]]] = {}
    for video_id, annotators in labels.items():
        for k, stack in annotators.items():
            keys = [f"{k}/{i}" for i in range(1, max(1, int(stack.max())) + 1)]
            groups.setdefault(video_id, {})[int(k)] = keys
            for i, key in enumerate(keys, start=1):
                masks.setdefault(video_id, {})[key] = stack == i
    expected = {v: dict.fromkeys(m, frames[v]) for v, m in masks.items()}
    write_archive(
        path,
        partial(_load, masks, frames),
        expected,
        jobs=1,
        writer=AnnotatorLabelPngs(groups=groups),
    )
    return path


def members(path: Path) -> dict[str, bytes]:
    """``{member name: bytes}`` of a zip."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def decoded(path: Path, labels: bool = False) -> dict[str, np.ndarray]:
    """``{member name: decoded mask}``: bool masks, or label images."""
    return {
        name: decode_label_png(data, name) if labels else decode_png(data, name)
        for name, data in members(path).items()
    }
