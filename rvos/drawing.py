"""Drawing primitives for masks: coloured overlays with captions, strips, a J&F bar plot.

- :func:`overlay_masks`, :func:`caption_band`: frames with masks blended in their colours and
  outlined, and a band of coloured captions to go below them, each wrapped to the width and cut
  to a number of lines;
- :func:`mask_strip`: rows of masks (one source each) over a few frames, with a title;
- :func:`jf_bar_plot`: J&F per video and archive (matplotlib, Agg backend).

Text is drawn by :mod:`rvos.fonts` (any script, emoji; fonts found once per process).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from rvos.fonts import FontStack, fit_text, font_stack, wrap_text
from rvos.io import atomic_output

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

# Mask colours, one per sentence (cycled): saturated, readable on dark and on most frames.
PALETTE: tuple[Color, ...] = (
    (255, 70, 70),
    (60, 160, 255),
    (70, 220, 90),
    (255, 200, 0),
    (200, 90, 255),
    (0, 220, 220),
    (255, 130, 20),
    (255, 100, 200),
)
BACKGROUND: Color = (0, 0, 0)
TEXT_COLOR: Color = (235, 235, 235)
# Caption font size as a fraction of the frame width, and its bounds in px.
CAPTION_FONT_FRACTION = 1 / 32
MIN_FONT_SIZE, MAX_FONT_SIZE = 12, 32
# Strip text size as a fraction of the tile height.
STRIP_FONT_FRACTION = 1 / 10
# Strip tiles: frames are resized smoothly, masks without inventing values.
RESIZE_FRAME, RESIZE_MASK = Image.Resampling.BILINEAR, Image.Resampling.NEAREST


# ----------------------------------------------------------------------------- drawing


def color_of(index: int) -> Color:
    """The colour of sentence ``index`` (the palette, cycled)."""
    return PALETTE[index % len(PALETTE)]


def hex_color(color: Color) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def mask_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Outline of ``mask: [H, W] bool``, ``width`` px thick inwards, ``[H, W] bool``.

    The frame border is not an outline: a mask touching it is not framed there.
    """
    mask = np.asarray(mask, dtype=bool)
    if width < 1 or not mask.any():
        return np.zeros_like(mask)
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def overlay_masks(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    colors: Sequence[Color],
    *,
    alpha: float,
    contour_width: int,
) -> np.ndarray:
    """Blend coloured masks over a frame, then draw their outlines.

    Args:
        image: ``[H, W, 3] uint8`` RGB frame.
        masks: ``[S, H, W] bool`` one mask per sentence; later ones are drawn on top.
        colors: ``S`` RGB colours.
        alpha: opacity of the colour inside a mask.
        contour_width: outline width in px (0: none), drawn opaque.
    Returns:
        ``[H, W, 3] uint8``.
    """
    out = np.asarray(image, dtype=np.float32).copy()
    for mask, color in zip(masks, colors, strict=True):
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        tint = np.asarray(color, dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * tint
        out[mask_outline(mask, contour_width)] = tint
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def caption_font(frame_width: int) -> FontStack:
    """The caption fonts at a size that suits ``frame_width``."""
    return font_stack(
        int(np.clip(round(frame_width * CAPTION_FONT_FRACTION), MIN_FONT_SIZE, MAX_FONT_SIZE))
    )


def strip_font(tile_height: int) -> FontStack:
    """The strip fonts at a size that suits strips of ``tile_height`` px tiles."""
    return font_stack(
        int(np.clip(round(tile_height * STRIP_FONT_FRACTION), MIN_FONT_SIZE, MAX_FONT_SIZE))
    )


def caption_band(
    captions: Sequence[str],
    colors: Sequence[Color],
    width: int,
    *,
    max_lines: int,
    font: FontStack | None = None,
) -> np.ndarray:
    """A dark band with one coloured caption per sentence, to go below a frame.

    Each caption is wrapped to the band's width and cut to ``max_lines`` lines (the last ending
    with an ellipsis when text is left out), so that a long sentence cannot make the band taller
    than ``len(captions) * max_lines`` lines.

    Args:
        captions: the sentences.
        colors: their RGB colours.
        width: the band's width (the frame's).
        max_lines: most lines per caption.
        font: default: :func:`caption_font` for ``width``.
    Returns:
        ``[B, width, 3] uint8`` with ``B`` what the wrapped lines need.
    """
    font = font or caption_font(width)
    line_height = font.line_height
    pad = max(2, line_height // 4)
    swatch = line_height - 2 * max(1, line_height // 5)
    indent = pad + swatch + pad
    wrapped = [
        wrap_text(c, font, max(1, width - indent - pad), max_lines=max_lines) for c in captions
    ]
    height = pad + sum(len(lines) for lines in wrapped) * line_height + pad
    band = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = pad
    for lines, color in zip(wrapped, colors, strict=True):
        top = y + (line_height - swatch) // 2
        draw.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=color)
        for line in lines:
            font.draw(band, (indent, y), line, color)
            y += line_height
    return np.asarray(band)


def pad_to_even(image: np.ndarray) -> np.ndarray:
    """Pad ``[H, W, 3]`` at the bottom/right with the background colour to even ``H`` and ``W``."""
    height, width = image.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    if not any(p[1] for p in pad):
        return image
    return np.pad(image, pad, constant_values=BACKGROUND[0])


# ----------------------------------------------------------------------------- strips


@dataclass(frozen=True)
class StripLayout:
    """Geometry of a strip: a title, a header of frame names, a label column and a tile grid.

    All sizes in px; tile ``(row, col)`` has its top-left corner at :meth:`tile_origin`.
    """

    rows: int
    cols: int
    tile_width: int
    tile_height: int
    label_width: int
    title_height: int
    header_height: int
    gap: int

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the whole strip."""
        width = self.label_width + self.cols * (self.tile_width + self.gap)
        height = self.title_height + self.header_height + self.rows * (self.tile_height + self.gap)
        return width, height

    def tile_origin(self, row: int, col: int) -> tuple[int, int]:
        """``(x, y)`` of the top-left pixel of tile ``(row, col)``."""
        x = self.label_width + col * (self.tile_width + self.gap)
        y = self.title_height + self.header_height + row * (self.tile_height + self.gap)
        return x, y


def strip_layout(
    *,
    rows: int,
    cols: int,
    frame_size: tuple[int, int],
    tile_height: int,
    title_lines: int,
    font: FontStack,
    labels: Sequence[str],
) -> StripLayout:
    """Layout of a ``rows x cols`` strip of frames of ``frame_size = (H, W)`` scaled to
    ``tile_height``, with ``title_lines`` lines of title and the row ``labels`` on the left."""
    height, width = frame_size
    tile_width = max(1, round(width * tile_height / height))
    line_height = font.line_height
    label_width = int(max(font.length(label) for label in labels)) + line_height
    return StripLayout(
        rows=rows,
        cols=cols,
        tile_width=tile_width,
        tile_height=tile_height,
        label_width=label_width,
        title_height=title_lines * line_height + line_height // 2,
        header_height=line_height,
        gap=max(2, line_height // 6),
    )


def evenly_spaced(num_frames: int, count: int) -> list[int]:
    """``min(count, num_frames)`` frame indices spread over ``[0, num_frames)``, first and last
    included."""
    if num_frames < 1:
        return []
    count = min(count, num_frames)
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, count)})


def mask_strip(
    frames: Sequence[np.ndarray],
    rows: Sequence[np.ndarray],
    *,
    title: str,
    note: str,
    max_title_lines: int,
    frame_names: Sequence[str],
    row_labels: Sequence[str],
    row_colors: Sequence[Color],
    tile_height: int,
    alpha: float,
    contour_width: int,
) -> Image.Image:
    """One expression's masks of several sources side by side on a few frames.

    Args:
        frames: ``N`` frames, each ``[H, W, 3] uint8``.
        rows: one ``[N, H, W] bool`` stack per row (e.g. stage 1, SAM 2, fused).
        title: the caption (e.g. the expression), wrapped to the strip's width and cut to
            ``max_title_lines`` lines (the last ending with an ellipsis when text is left out).
        note: a line under the title (e.g. the fusion decision; empty: none), cut to the width.
        frame_names: ``N`` column headers.
        row_labels, row_colors: per row, its label and mask colour.
        tile_height: height in px of each frame tile.
        alpha, contour_width: see :func:`overlay_masks`.
    Returns:
        an RGB image of :attr:`StripLayout.size` (see :func:`strip_layout`).
    """
    if not frames:
        raise ValueError("a strip needs at least one frame")
    if len(rows) != len(row_labels) or len(rows) != len(row_colors):
        raise ValueError(f"{len(rows)} rows, {len(row_labels)} labels, {len(row_colors)} colours")
    font = strip_font(tile_height)
    height, width = np.asarray(frames[0]).shape[:2]
    probe = strip_layout(
        rows=len(rows),
        cols=len(frames),
        frame_size=(height, width),
        tile_height=tile_height,
        title_lines=1,
        font=font,
        labels=row_labels,
    )
    text_width = max(1, probe.size[0] - 2 * probe.gap)
    title_lines = wrap_text(title, font, text_width, max_lines=max_title_lines)
    if note:
        title_lines.append(fit_text(note, font, text_width))
    layout = strip_layout(
        rows=len(rows),
        cols=len(frames),
        frame_size=(height, width),
        tile_height=tile_height,
        title_lines=len(title_lines),
        font=font,
        labels=row_labels,
    )
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    line_height = font.line_height
    for index, line in enumerate(title_lines):
        font.draw(canvas, (layout.gap, index * line_height), line, TEXT_COLOR)
    for col, name in enumerate(frame_names):
        x, _ = layout.tile_origin(0, col)
        header = fit_text(str(name), font, layout.tile_width)
        font.draw(canvas, (x, layout.title_height), header, TEXT_COLOR)
    tile_size = (layout.tile_width, layout.tile_height)
    tiles = [
        np.asarray(Image.fromarray(np.asarray(f)).resize(tile_size, RESIZE_FRAME)) for f in frames
    ]
    for row, (stack, label, color) in enumerate(zip(rows, row_labels, row_colors, strict=True)):
        _, y = layout.tile_origin(row, 0)
        font.draw(canvas, (layout.gap, y + (layout.tile_height - line_height) // 2), label, color)
        for col, (tile, mask) in enumerate(zip(tiles, stack, strict=True)):
            small = np.asarray(
                Image.fromarray(np.asarray(mask, dtype=bool)).resize(tile_size, RESIZE_MASK)
            )
            drawn = overlay_masks(tile, [small], [color], alpha=alpha, contour_width=contour_width)
            canvas.paste(Image.fromarray(drawn), layout.tile_origin(row, col))
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` to ``path`` atomically (folders created)."""
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


# ----------------------------------------------------------------------------- J&F plot


# Figure geometry of the J&F plot, inches: per video row, margins, width; and its resolution.
JF_PLOT_ROW_INCHES = 0.28
JF_PLOT_MARGIN_INCHES = 1.8
JF_PLOT_WIDTH_INCHES = 8.0
JF_PLOT_DPI = 100


def jf_plot_size(num_videos: int) -> tuple[int, int]:
    """``(width, height)`` in px of :func:`jf_bar_plot` for ``num_videos`` videos."""
    height = JF_PLOT_MARGIN_INCHES + JF_PLOT_ROW_INCHES * max(num_videos, 1)
    return round(JF_PLOT_WIDTH_INCHES * JF_PLOT_DPI), round(height * JF_PLOT_DPI)


def jf_bar_plot(
    scores: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    colors: Mapping[str, Color],
    totals: Mapping[str, float] | None = None,
    title: str = "J&F per video",
) -> Path:
    """Horizontal grouped bars of J&F per video, one colour per archive.

    Args:
        scores: ``{archive: {video_id: J&F in [0, 1]}}``; videos sorted by the last archive's
            score, best on top.
        path: the PNG to write, of :func:`jf_plot_size` pixels.
        colors: ``{archive: colour}`` (an archive without one takes the palette's).
        totals: ``{archive: overall J&F}``, shown in the legend.
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archives = list(scores)
    if not archives:
        raise ValueError("no scores to plot")
    last = scores[archives[-1]]
    videos = sorted(last, key=lambda v: (last[v], v))
    width_px, height_px = jf_plot_size(len(videos))
    fig, ax = plt.subplots(figsize=(width_px / JF_PLOT_DPI, height_px / JF_PLOT_DPI))
    try:
        bar = 0.8 / len(archives)
        y = np.arange(len(videos), dtype=np.float64)
        for index, archive in enumerate(archives):
            values = [100 * scores[archive].get(v, 0.0) for v in videos]
            label = archive
            if totals and archive in totals:
                label = f"{archive} (J&F {100 * totals[archive]:.1f})"
            color = hex_color(colors.get(archive, color_of(index)))
            ax.barh(
                y + ((len(archives) - 1) / 2 - index) * bar, values, bar, label=label, color=color
            )
        ax.set_yticks(y, videos, fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("J&F (%)")
        ax.set_title(title, pad=24)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(archives), fontsize=8)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=JF_PLOT_DPI)
    finally:
        plt.close(fig)
    return path
