"""Pictures of masks: coloured overlays with captions, per-expression strips, a J&F plot.

- :func:`overlay_masks`, :func:`caption_band`: the demo's overlay video frames (one colour per
  sentence, alpha blending, outlines, the sentences below the frame in their colours).
- :func:`mask_strip`: one expression of a benchmark run, rows stage 1 / SAM 2 / fused, columns a
  few evenly spaced frames, the expression as title.
- :func:`jf_bar_plot`: J&F per video and archive (matplotlib, Agg backend).
- :func:`write_run_visualizations`: both for a finished run (``visualize.enabled=true``, or
  ``run_pipeline.py --visualize``), into ``work_dir/visualize/``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

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
# Strip rows: label and colour of each archive's masks.
STRIP_ROWS: tuple[tuple[str, Color], ...] = (
    ("stage 1", PALETTE[6]),
    ("SAM 2", PALETTE[1]),
    ("fused", PALETTE[2]),
)
# Bar colours of the J&F plot: those of the strip rows showing the same masks.
ARCHIVE_COLORS: dict[str, Color] = {
    "stage1.zip": STRIP_ROWS[0][1],
    "stage2.zip": STRIP_ROWS[1][1],
    "fused.zip": STRIP_ROWS[2][1],
}
# The archive each strip row shows (see ``stage3_fusion.records.archive_masks``).
STRIP_STAGES = (1, 2, 3)
BACKGROUND: Color = (0, 0, 0)
TEXT_COLOR: Color = (235, 235, 235)
# Caption font size as a fraction of the frame width, and its bounds in px.
CAPTION_FONT_FRACTION = 1 / 32
MIN_FONT_SIZE, MAX_FONT_SIZE = 12, 32
# Strip text size as a fraction of the tile height.
STRIP_FONT_FRACTION = 1 / 10
# Strip tiles: frames are resized smoothly, masks without inventing values.
RESIZE_FRAME, RESIZE_MASK = Image.Resampling.BILINEAR, Image.Resampling.NEAREST
VISUALIZE_DIR = "visualize"
JF_PLOT_NAME = "jf_per_video.png"


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class VisualizeOptions:
    """The ``visualize`` block of ``configs/pipeline.yaml``.

    Attributes:
        enabled: draw strips (and the J&F plot) after a run.
        num_frames: evenly spaced frames per expression strip.
        tile_height: height in px of each frame in a strip.
        alpha: opacity of mask colours over frames, in ``[0, 1]``.
        contour_width: width in px of mask outlines (0: none).
    """

    enabled: bool = False
    num_frames: int = 4
    tile_height: int = 160
    alpha: float = 0.5
    contour_width: int = 2

    def __post_init__(self) -> None:
        for key in ("num_frames", "tile_height"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"visualize.{key}={value!r}: expected a positive integer")
        if not isinstance(self.contour_width, int) or self.contour_width < 0:
            raise ValueError(
                f"visualize.contour_width={self.contour_width!r}: expected an integer >= 0"
            )
        if not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"visualize.alpha={self.alpha!r}: expected a number in [0, 1]")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> VisualizeOptions:
        """From the ``visualize`` config section (missing keys take the defaults)."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown visualize key(s) {unknown}; known: {sorted(known)}")
        return cls(**section)


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


def caption_font(frame_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at a size that suits ``frame_width``."""
    size = int(np.clip(round(frame_width * CAPTION_FONT_FRACTION), MIN_FONT_SIZE, MAX_FONT_SIZE))
    return ImageFont.load_default(size)


def strip_font(tile_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at a size that suits strips of ``tile_height`` px tiles."""
    size = int(np.clip(round(tile_height * STRIP_FONT_FRACTION), MIN_FONT_SIZE, MAX_FONT_SIZE))
    return ImageFont.load_default(size)


def fit_text(text: str, font: ImageFont.ImageFont, max_width: int) -> str:
    """``text``, cut with an ellipsis if it is wider than ``max_width`` px."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def _font_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom) + 2


def wrap_text(text: str, font: ImageFont.ImageFont, max_width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``max_width`` px (a too-long word gets a line)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= max_width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def caption_band(
    captions: Sequence[str],
    colors: Sequence[Color],
    width: int,
    *,
    font: ImageFont.ImageFont | None = None,
) -> np.ndarray:
    """A dark band with one coloured, wrapped caption per sentence, to go below a frame.

    Args:
        captions: the sentences.
        colors: their RGB colours.
        width: the band's width (the frame's).
        font: default: :func:`caption_font` for ``width``.
    Returns:
        ``[B, width, 3] uint8`` with ``B`` what the wrapped lines need.
    """
    font = font or caption_font(width)
    line_height = _font_height(font)
    pad = max(2, line_height // 4)
    swatch = line_height - 2 * max(1, line_height // 5)
    indent = pad + swatch + pad
    wrapped = [wrap_text(c, font, max(1, width - indent - pad)) for c in captions]
    height = pad + sum(len(lines) for lines in wrapped) * line_height + pad
    band = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = pad
    for lines, color in zip(wrapped, colors, strict=True):
        top = y + (line_height - swatch) // 2
        draw.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=color)
        for line in lines:
            draw.text((indent, y), line, fill=color, font=font)
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
    font: ImageFont.ImageFont,
    labels: Sequence[str] = tuple(label for label, _ in STRIP_ROWS),
) -> StripLayout:
    """Layout of a ``rows x cols`` strip of frames of ``frame_size = (H, W)`` scaled to
    ``tile_height``, with ``title_lines`` lines of title and the row ``labels`` on the left."""
    height, width = frame_size
    tile_width = max(1, round(width * tile_height / height))
    line_height = _font_height(font)
    label_width = int(max(font.getlength(label) for label in labels)) + line_height
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
    frame_names: Sequence[str],
    row_labels: Sequence[str] = tuple(label for label, _ in STRIP_ROWS),
    row_colors: Sequence[Color] = tuple(color for _, color in STRIP_ROWS),
    tile_height: int = 160,
    alpha: float = 0.5,
    contour_width: int = 2,
) -> Image.Image:
    """One expression's masks of several sources side by side on a few frames.

    Args:
        frames: ``N`` frames, each ``[H, W, 3] uint8``.
        rows: one ``[N, H, W] bool`` stack per row (e.g. stage 1, SAM 2, fused).
        title: the caption (e.g. the expression), wrapped to the strip's width.
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
    title_lines = wrap_text(title, font, max(1, probe.size[0] - 2 * probe.gap))
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
    draw = ImageDraw.Draw(canvas)
    line_height = _font_height(font)
    for index, line in enumerate(title_lines):
        draw.text((layout.gap, index * line_height), line, fill=TEXT_COLOR, font=font)
    for col, name in enumerate(frame_names):
        x, _ = layout.tile_origin(0, col)
        header = fit_text(str(name), font, layout.tile_width)
        draw.text((x, layout.title_height), header, fill=TEXT_COLOR, font=font)
    tile_size = (layout.tile_width, layout.tile_height)
    tiles = [
        np.asarray(Image.fromarray(np.asarray(f)).resize(tile_size, RESIZE_FRAME)) for f in frames
    ]
    for row, (stack, label, color) in enumerate(zip(rows, row_labels, row_colors, strict=True)):
        _, y = layout.tile_origin(row, 0)
        draw.text(
            (layout.gap, y + (layout.tile_height - line_height) // 2), label, fill=color, font=font
        )
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


def per_video_jf(per_expression: Mapping[tuple[str, str], Any]) -> dict[str, float]:
    """``{video_id: mean J&F over its expressions}`` from ``{(video_id, exp_id): score}`` where
    each score has a ``jf`` attribute (:class:`stage3_fusion.evaluate.ExpressionScore`)."""
    sums: dict[str, list[float]] = {}
    for (video_id, _), score in per_expression.items():
        sums.setdefault(video_id, []).append(float(score.jf))
    return {video_id: float(np.mean(values)) for video_id, values in sums.items()}


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
    totals: Mapping[str, float] | None = None,
    title: str = "J&F per video",
) -> Path:
    """Horizontal grouped bars of J&F per video, one colour per archive.

    Args:
        scores: ``{archive: {video_id: J&F in [0, 1]}}``; videos sorted by the last archive's
            score, best on top.
        path: the PNG to write, of :func:`jf_plot_size` pixels.
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
            color = hex_color(ARCHIVE_COLORS.get(archive, color_of(index)))
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


# ----------------------------------------------------------------------------- a run


def _expression_title(text: str, decision: Mapping[str, Any] | None) -> str:
    """Caption of a strip: the expression and the fusion decision that made the fused row."""
    if decision is None:
        return f'"{text}"'
    rule = "SAM 2 ∪ stage 1 (multi-object)" if decision.get("multi_object") else "SAM 2"
    smaller, both = decision.get("frames_sam2_smaller", 0), decision.get("frames_both_nonempty", 0)
    return f'"{text}"  fused = {rule}; SAM 2 box smaller on {smaller}/{both} frames'


def write_video_strips(
    cfg: Mapping[str, Any],
    split: Any,
    video_id: str,
    options: VisualizeOptions,
) -> list[Path]:
    """Strips of every expression of one video, from its stage 1, 2 and 3 records.

    Returns:
        the written ``work_dir/visualize/<video_id>/<exp_id>.png``; a strip newer than the video's
        stage-3 record is kept as it is.
    """
    from rvos import intermediates as im
    from stage3_fusion.records import archive_masks

    work_dir = Path(cfg["work_dir"])
    out_dir = work_dir / VISUALIZE_DIR / video_id
    record = im.stage_path(work_dir, 3, video_id)
    header = im.read_header(record) or {}
    decisions = header.get("decisions", {})
    video = split.videos[video_id]
    newest = record.stat().st_mtime
    todo = [
        e
        for e in video.expressions
        if not (out_dir / f"{e}.png").is_file() or (out_dir / f"{e}.png").stat().st_mtime < newest
    ]
    if not todo:
        return []
    frame_names = list(video.frame_names)
    picked = evenly_spaced(len(frame_names), options.num_frames)
    paths = split.frame_paths(video_id)
    frames = []
    for index in picked:
        with Image.open(paths[index]) as image:
            frames.append(np.asarray(image.convert("RGB")))
    masks = {stage: archive_masks(work_dir, stage, video_id)[1] for stage in STRIP_STAGES}
    written = []
    for exp_id in todo:
        strip = mask_strip(
            frames,
            [masks[stage][exp_id][picked] for stage in STRIP_STAGES],
            title=f"{video_id}/{exp_id}: "
            + _expression_title(video.expressions[exp_id].text, decisions.get(exp_id)),
            frame_names=[frame_names[i] for i in picked],
            tile_height=options.tile_height,
            alpha=options.alpha,
            contour_width=options.contour_width,
        )
        written.append(save_png(strip, out_dir / f"{exp_id}.png"))
    return written


def write_run_visualizations(
    cfg: Mapping[str, Any],
    split: Any,
    evaluations: Mapping[str, Any] | None = None,
) -> list[Path]:
    """After a run: a strip per expression and, with evaluations, the J&F-per-video plot.

    Args:
        cfg: the resolved pipeline configuration (plain data, with ``run.fingerprints``).
        split: the :class:`rvos.mevis.MevisSplit` of the run.
        evaluations: ``{archive name: EvaluationResult}`` of the run (empty: no plot).
    Returns:
        the files written. Videos whose three stage records are not all finished are skipped
        (with a log line).
    """
    from tqdm import tqdm

    from rvos import intermediates as im

    options = VisualizeOptions.from_config(cfg.get("visualize"))
    work_dir = Path(cfg["work_dir"])
    fingerprints = cfg["run"]["fingerprints"]
    ready = [
        vid
        for vid in split.video_ids
        if all(
            im.is_finished(
                im.stage_path(work_dir, s, vid), im.STAGE_KINDS[s], fingerprints[f"stage{s}"]
            )
            for s in STRIP_STAGES
        )
    ]
    if len(ready) < len(split.video_ids):
        logger.info(
            "visualize: %d of %d video(s) lack finished stage 1-3 records and are not drawn",
            len(split.video_ids) - len(ready),
            len(split.video_ids),
        )
    written: list[Path] = []
    for video_id in tqdm(ready, desc="visualize", unit="video", dynamic_ncols=True):
        written += write_video_strips(cfg, split, video_id, options)
    if evaluations:
        scores = {name: per_video_jf(ev.per_expression) for name, ev in evaluations.items()}
        totals = {name: float(ev.jf) for name, ev in evaluations.items()}
        written.append(
            jf_bar_plot(
                scores,
                work_dir / VISUALIZE_DIR / JF_PLOT_NAME,
                totals=totals,
                title=f"J&F per video: {cfg.get('name', '')}",
            )
        )
    logger.info("visualize: %d file(s) written to %s", len(written), work_dir / VISUALIZE_DIR)
    return written
