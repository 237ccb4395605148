"""Mask pictures: overlays, captions, per-expression strips and the J&F-per-video plot."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from referdino_plus.config import ConfigError, compose_config, load_config
from referdino_plus.visualize import (
    ARCHIVE_COLORS,
    STRIP_ROWS,
    per_video_jf,
    write_run_visualizations,
)
from rvos import intermediates as im
from rvos.drawing import (
    caption_band,
    caption_font,
    evenly_spaced,
    jf_bar_plot,
    jf_plot_size,
    mask_outline,
    mask_strip,
    overlay_masks,
    pad_to_even,
    strip_font,
    strip_layout,
)
from rvos.masks import RunLengthMasks
from rvos.mevis import MevisSplit

LABELS = [label for label, _ in STRIP_ROWS]
COLORS = [color for _, color in STRIP_ROWS]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def square_masks(num_frames: int, height: int, width: int) -> np.ndarray:
    """``[T, H, W] bool``: a 6x6 square moving right by 2 px per frame."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        masks[t, 4:10, 2 + 2 * t : 8 + 2 * t] = True
    return masks


def test_overlay_blends_inside_draws_outline_and_keeps_outside():
    image = np.full((12, 16, 3), 100, dtype=np.uint8)
    mask = np.zeros((12, 16), dtype=bool)
    mask[2:10, 3:13] = True
    out = overlay_masks(image, [mask], [RED], alpha=0.5, contour_width=1)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert tuple(out[5, 7]) == (178, 50, 50)  # inside: half red, half grey
    assert tuple(out[2, 7]) == RED  # outline
    assert tuple(out[0, 0]) == (100, 100, 100)  # outside
    outline = mask_outline(mask, 1)
    assert outline.sum() == 2 * 10 + 2 * 6 and not (outline & ~mask).any()
    empty = overlay_masks(image, [np.zeros_like(mask)], [BLUE], alpha=1.0, contour_width=2)
    assert (empty == image).all()


def test_caption_band_wraps_long_sentences_to_the_width():
    short = caption_band(["a dog"], [RED], 200, max_lines=3)
    long = caption_band(
        ["the dog that runs to the left and then jumps " * 3], [RED], 200, max_lines=3
    )
    assert short.dtype == np.uint8 and short.shape[1:] == (200, 3)
    assert long.shape[1] == 200 and long.shape[0] > short.shape[0]
    two = caption_band(["a dog", "a cat"], [RED, BLUE], 200, max_lines=3)
    assert two.shape[0] > short.shape[0]
    # The caption is drawn in its colour.
    assert (np.abs(two.astype(int) - BLUE).sum(axis=-1) == 0).any()


def test_pad_to_even():
    assert pad_to_even(np.zeros((5, 7, 3), dtype=np.uint8)).shape == (6, 8, 3)
    assert pad_to_even(np.zeros((4, 6, 3), dtype=np.uint8)).shape == (4, 6, 3)


def test_mask_strip_has_the_layout_size_and_colours_each_row(tmp_path):
    height, width, tile_height = 24, 32, 48
    frames = [np.full((height, width, 3), 90, dtype=np.uint8) for _ in range(4)]
    masks = square_masks(4, height, width)
    rows = [masks, np.zeros_like(masks), masks]
    strip = mask_strip(
        frames,
        rows,
        title="vid/0: the square",
        note="",
        max_title_lines=3,
        frame_names=["00000", "00001", "00002", "00003"],
        row_labels=LABELS,
        row_colors=COLORS,
        tile_height=tile_height,
        alpha=0.5,
        contour_width=2,
    )
    layout = strip_layout(
        rows=3,
        cols=4,
        frame_size=(height, width),
        tile_height=tile_height,
        title_lines=1,
        font=strip_font(tile_height),
        labels=LABELS,
    )
    assert strip.size == layout.size
    assert layout.tile_width == 64
    pixels = np.asarray(strip)
    for row, (_, color) in enumerate(STRIP_ROWS):
        x, y = layout.tile_origin(row, 0)
        inside = pixels[y + 7 * 2, x + 5 * 2].astype(int)  # mask pixel (7, 5) at scale 2
        grey = np.array([90, 90, 90])
        if row == 1:
            assert (inside == grey).all()
        else:
            assert np.abs(inside - (grey + np.array(color)) / 2).max() <= 2
    path = tmp_path / "strip.png"
    strip.save(path)
    assert Image.open(path).size == layout.size


def test_jf_bar_plot_has_the_announced_size(tmp_path):
    scores = {
        "stage1.zip": {"a": 0.2, "b": 0.5, "c": 0.9},
        "stage2.zip": {"a": 0.3, "b": 0.6, "c": 0.8},
        "fused.zip": {"a": 0.4, "b": 0.7, "c": 0.85},
    }
    path = jf_bar_plot(
        scores, tmp_path / "plot.png", colors=ARCHIVE_COLORS, totals={"fused.zip": 0.65}
    )
    with Image.open(path) as image:
        assert image.size == jf_plot_size(3)
    assert jf_plot_size(30)[1] > jf_plot_size(3)[1]


def test_per_video_jf_and_frame_choice():
    score = SimpleNamespace
    per_expression = {("a", "0"): score(jf=0.2), ("a", "1"): score(jf=0.4), ("b", "0"): score(jf=1)}
    assert per_video_jf(per_expression) == pytest.approx({"a": 0.3, "b": 1.0})
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(2, 4) == [0, 1]
    assert evenly_spaced(0, 4) == []


def test_options_name_the_bad_key():
    assert compose_config(["visualize.num_frames=3"]).visualize.num_frames == 3
    with pytest.raises(ConfigError, match="visualize.num_frames"):
        compose_config(["visualize.num_frames=0"])
    with pytest.raises(ConfigError, match="visualize.alpha"):
        compose_config(["visualize.alpha=2"])
    with pytest.raises(ConfigError, match="visualize.frames"):
        compose_config(["+visualize.frames=2"])


def write_records(work_dir: Path, split: MevisSplit, fingerprints: dict[int, str]) -> None:
    """Stage 1-3 records of every video of ``split`` with one moving square per expression."""
    for video_id, video in split.videos.items():
        height, width = split.frame_size(video_id)
        frames = list(video.frame_names)
        masks = square_masks(len(frames), height, width)
        stage1 = im.Stage1Video(video_id, frames, height, width)
        stage2 = im.Stage2Video(video_id, frames, height, width)
        stage3 = im.Stage3Video(video_id, frames, height, width)
        for exp_id in video.expressions:
            stage1.expressions[exp_id] = im.ExpressionProposals(
                scores=np.ones((len(frames), 1), dtype=np.float32),
                boxes=np.zeros((len(frames), 1, 4), dtype=np.float32),
                masks=RunLengthMasks.encode(masks[:, None]),
                query_ids=np.zeros(1, dtype=np.int64),
                answer=RunLengthMasks.encode(masks),
            )
            stage2.expressions[exp_id] = im.ExpressionRefinement(
                kept_columns=np.zeros(1, dtype=np.int64),
                prompt_frames=np.zeros(1, dtype=np.int64),
                sam2_masks=RunLengthMasks.encode(masks[:, None]),
                stage1_union=RunLengthMasks.encode(masks),
            )
            stage3.expressions[exp_id] = im.ExpressionFusion(
                masks=RunLengthMasks.encode(masks),
                multi_object=False,
                frames_sam2_smaller=0,
                frames_both_nonempty=len(frames),
            )
        im.save_stage1(im.stage_path(work_dir, 1, video_id), stage1, fingerprint=fingerprints[1])
        im.save_stage2(im.stage_path(work_dir, 2, video_id), stage2, fingerprint=fingerprints[2])
        im.save_stage3(im.stage_path(work_dir, 3, video_id), stage3, fingerprint=fingerprints[3])


def test_run_visualizations_from_records(tmp_path, make_split):
    videos = {
        "vid1": {"frames": [f"{t:05d}" for t in range(6)], "expressions": {"0": "a", "1": "b"}},
        "vid2": {"frames": ["00000", "00001"], "expressions": {"0": "the square"}},
    }
    split = MevisSplit(make_split(tmp_path / "split", videos, size=(24, 32)))
    fingerprints = {1: "f1", 2: "f2", 3: "f3"}
    work_dir = tmp_path / "work"
    write_records(work_dir, split, fingerprints)
    cfg = load_config(
        [
            "name=test",
            f"work_dir={work_dir}",
            "visualize.enabled=true",
            "visualize.num_frames=3",
            "visualize.tile_height=48",
        ]
    )
    evaluation = SimpleNamespace(
        jf=0.5,
        per_expression={
            ("vid1", "0"): SimpleNamespace(jf=0.4),
            ("vid1", "1"): SimpleNamespace(jf=0.6),
            ("vid2", "0"): SimpleNamespace(jf=0.9),
        },
    )
    written = write_run_visualizations(cfg, fingerprints, split, {"fused.zip": evaluation})
    root = work_dir / "visualize"
    assert sorted(written) == sorted(
        [root / "vid1" / "0.png", root / "vid1" / "1.png", root / "vid2" / "0.png"]
        + [root / "jf_per_video.png"]
    )
    with Image.open(root / "vid1" / "0.png") as image:
        assert (
            image.size[0]
            == strip_layout(
                rows=3,
                cols=3,
                frame_size=(24, 32),
                tile_height=48,
                title_lines=1,
                font=strip_font(48),
                labels=LABELS,
            ).size[0]
        )
    with Image.open(root / "jf_per_video.png") as image:
        assert image.size == jf_plot_size(2)
    # Strips newer than the records are kept; a stale record set is not drawn.
    assert write_run_visualizations(cfg, fingerprints, split, None) == []
    stale = {**fingerprints, 3: "other"}
    assert write_run_visualizations(cfg, stale, split, None) == []


# ----------------------------------------------------------------------------- text in pictures

WHITE = (255, 255, 255)
# One or a few characters of each script a sentence may be typed in (a space between them).
SCRIPTS = {
    "Latin with diacritics": "ä é ñ ø ß ç ł ő ů",
    "punctuation": "— – … « » „ “ ” ‘ ’",
    "Greek": "Ω α β γ έ",
    "Cyrillic": "Ж я й Ї",
    "Chinese": "猫 狗 鸟",
    "Japanese": "あ ア",
    "Korean": "한 글",
    "Arabic": "مرحبا",
    "Hebrew": "שלום",
    "Devanagari": "क ख",
    "Thai": "ไทย",
    "symbols": "☂ ♞",
    "emoji": "😀 🐕 ❤️ 👨‍👩‍👧 🇩🇪",
}


def glyph_band(text: str) -> np.ndarray:
    return caption_band([text], [WHITE], 320, max_lines=1)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_captions_draw_every_script_instead_of_boxes(script):
    """A character a font lacks is drawn as that font's box (.notdef), the same picture as a
    code point that no font has; each of these must look different from it."""
    box = glyph_band("\U0010ffff")
    for piece in SCRIPTS[script].split():
        assert not np.array_equal(glyph_band(piece), box), f"{piece!r} ({script}) is a box"


def test_a_character_no_font_has_is_a_visible_replacement():
    from rvos.fonts import REPLACEMENT, font_stack

    assert np.array_equal(glyph_band("\U0010ffff"), glyph_band(REPLACEMENT))
    assert glyph_band(REPLACEMENT).max() > 0  # drawn, not blank
    runs = font_stack(16).runs("a\U0010ffffb")
    assert "".join(run.text for run in runs) == f"a{REPLACEMENT}b"


def test_emoji_sequences_and_marks_stay_in_one_run_and_one_cluster():
    from rvos.fonts import clusters, font_stack

    family, flag, keycap = "👨‍👩‍👧", "🇩🇪", "1️⃣"
    assert clusters(f"a{family}{flag}{keycap}é") == ["a", family, flag, keycap, "é"]
    stack = font_stack(16)
    for sequence in (family, flag):
        (run,) = stack.runs(sequence)
        assert run.face.emoji
    (run,) = stack.runs("e\u0301")  # e + combining acute: one run, one face
    assert run.text == "e\u0301"


def test_colour_emoji_are_drawn_in_colour():
    """With Debian's fonts-noto-color-emoji (.ci/run installs it): a white caption of an emoji
    has coloured pixels. Without it, emoji are monochrome (Noto Emoji): skipped, failed in CI."""
    import os

    from rvos.fonts import installed_faces

    if not any(face.strike for face in installed_faces()):
        message = "no colour emoji font (apt-get install fonts-noto-color-emoji)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    band = glyph_band("🐕 🍎").astype(int)
    spread = band.max(axis=-1) - band.min(axis=-1)  # 0 for white text on black
    assert spread.max() > 100


def test_arabic_is_joined_with_raqm():
    """Pillow's raqm layout (FriBiDi: Debian's libfribidi0, which .ci/run installs) shapes Arabic:
    a letter between two others takes its narrow joined form."""
    import os

    from rvos.fonts import font_stack, has_raqm

    if not has_raqm():
        message = "Pillow's raqm layout is unavailable (apt-get install libfribidi0)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    stack = font_stack(32)
    (run,) = stack.runs("بببب")
    assert run.face.source.name == "Noto Sans Arabic"
    assert stack.length("بببب") < 0.8 * 4 * stack.length("ب")


def test_a_400_word_caption_is_wrapped_and_capped():
    from rvos.fonts import ELLIPSIS, wrap_text

    sentence = " ".join(["the dog that runs to the left"] * 58)  # 406 words
    font = caption_font(320)
    band = caption_band([sentence, "a cat"], [RED, BLUE], 320, max_lines=3)
    pad = max(2, font.line_height // 4)
    assert band.shape == (2 * pad + (3 + 1) * font.line_height, 320, 3)
    lines = wrap_text(sentence, font, 280, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith(ELLIPSIS)
    assert all(font.length(line) <= 280 for line in lines)
    assert wrap_text("a cat", font, 280, max_lines=3) == ["a cat"]
    # no cap: as many lines as the text needs
    assert len(wrap_text(sentence, font, 280, max_lines=None)) > 10


def test_text_without_spaces_wraps_between_characters():
    from rvos.fonts import wrap_text

    font = caption_font(320)
    chinese = "一个人坐在床上看着窗外的小鸟飞来飞去然后又回到了房间里面坐下来休息"
    lines = wrap_text(chinese, font, 150, max_lines=None)
    assert len(lines) > 1 and "".join(lines) == chinese
    assert all(font.length(line) <= 150 for line in lines)
    url = "https://example.org/" + "x" * 200
    assert all(font.length(line) <= 150 for line in wrap_text(url, font, 150, max_lines=None))


def test_strip_titles_are_capped_and_keep_the_note():
    frames = [np.full((24, 32, 3), 90, dtype=np.uint8) for _ in range(2)]
    masks = square_masks(2, 24, 32)

    def strip(title: str) -> Image.Image:
        return mask_strip(
            frames,
            [masks, masks, masks],
            title=title,
            note="fused = SAM 2; SAM 2 box smaller on 0/2 frames",
            max_title_lines=2,
            frame_names=["00000", "00001"],
            row_labels=LABELS,
            row_colors=COLORS,
            tile_height=48,
            alpha=0.5,
            contour_width=2,
        )

    short, long = strip("vid/0: a dog"), strip("vid/0: " + "a dog running left " * 100)
    line_height = strip_font(48).line_height
    assert long.size[0] == short.size[0]
    assert long.size[1] == short.size[1] + line_height  # 2 title lines + the note


def test_caption_max_lines_is_an_option():
    assert compose_config(["visualize.caption_max_lines=5"]).visualize.caption_max_lines == 5
    assert load_config([]).visualize.caption_max_lines >= 1
    with pytest.raises(ConfigError, match="visualize.caption_max_lines"):
        compose_config(["visualize.caption_max_lines=0"])
