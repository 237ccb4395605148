"""Ref-DAVIS17's masks: per-annotator indexed PNGs in the DAVIS palette.

Predictions hold, per annotator ``k``, one indexed PNG per frame: ``anno_<k>/<video>/<frame>.png``
(mode ``P``, the DAVIS palette; pixel value ``i`` is the object of the annotator's ``i``-th
expression, 0 the background), as ReferDINO's ``eval/inference_davis.py`` writes them. The ground
truth (``Annotations_unsupervised``) is indexed the same way, with 255 for void pixels.

:mod:`rvos.archive` writes these PNGs; :mod:`rvos.davis_metric` scores them with the DAVIS 2017
unsupervised protocol.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from rvos.archive_reader import ArchiveError, check_png

# Value of void pixels in DAVIS annotations (davis2017 toolkit: DAVIS.VOID_LABEL).
VOID_LABEL = 255
# Folder of annotator k's predictions (ReferDINO's inference_davis.py and eval_davis.py).
ANNOTATOR_DIR = "anno_{annotator}"


def annotator_dir(annotator: int) -> str:
    """``anno_<k>``: the archive folder of annotator ``k``."""
    return ANNOTATOR_DIR.format(annotator=annotator)


def davis_palette() -> list[int]:
    """The DAVIS palette (the PASCAL VOC colour map the DAVIS annotations and toolkit use):
    256 ``(r, g, b)`` entries flattened, 768 ints. Label 1 is ``(128, 0, 0)``, 2 ``(0, 128, 0)``.

    Colour ``i`` spreads the bits of ``i`` over the channels: bit ``3j`` of ``i`` sets bit
    ``7 - j`` of red, bit ``3j + 1`` of green, bit ``3j + 2`` of blue.
    """
    palette = []
    for label in range(256):
        rgb = [0, 0, 0]
        for j in range(8):
            for channel in range(3):
                if label >> (3 * j + channel) & 1:
                    rgb[channel] |= 1 << (7 - j)
        palette.extend(rgb)
    return palette


def encode_label_png(labels: np.ndarray, compress_level: int = 1) -> bytes:
    """``labels: [H, W] uint8`` (0 background, ``i`` object ``i``) -> PNG bytes, mode P, DAVIS
    palette."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(davis_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_label_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> ``[H, W]`` labels as the toolkit reads them (``np.array(Image.open(...))``:
    palette indices of a mode-P image, grey values of a mode-L one).

    Raises:
        ArchiveError: naming ``where``: not a PNG, one that does not decode, or not indexed.
    """
    check_png(data, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            labels = np.array(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ArchiveError(f"{where} is a PNG that does not decode ({err})") from None
    if labels.ndim != 2:
        raise ArchiveError(
            f"{where}: expected an indexed (one-channel) PNG, got shape {labels.shape}"
        )
    return labels
