"""Text in pictures in any script: each character drawn by the first installed font that has it.

PIL draws a string with one font and shows a box for every character that font lacks; it has no
fallback from one font to the next. :class:`FontStack` cuts a line into runs of characters and
draws each run with the first font of :data:`FONT_FILES` whose character map (read with fontTools)
has all of it, so that a sentence in Latin with diacritics, Greek, Cyrillic, Arabic, Hebrew, the
Indic and South-East Asian scripts, Chinese, Japanese, Korean, symbols or emoji is drawn as typed.
A character that no installed font has is drawn as U+FFFD (the replacement character, a visible
diamond with a question mark) and logged once.

Where the fonts come from (the first found wins; a missing one is skipped):

- the ``manimgx-fonts`` and ``manimgx-fonts-cjk`` Python packages (``requirements.txt``, so
  ``make setup`` installs them, no root needed): Noto Sans, Noto Sans for 19 scripts, Noto Sans
  Symbols, monochrome Noto Emoji, and Noto Sans CJK; unmodified Noto fonts under the SIL Open
  Font License 1.1;
- Debian's font packages where installed: ``fonts-noto-color-emoji`` (colour emoji, preferred to
  the monochrome ones), ``fonts-noto-core`` and ``fonts-noto-cjk`` (the same Noto faces, for an
  environment without the Python packages), ``fonts-dejavu-core`` (more symbols);
- none of these: Pillow's built-in font, which has printable ASCII only (the rest becomes "?").

Shaping and direction: Pillow's raqm layout (Pillow's wheels carry libraqm and HarfBuzz and load
the system's FriBiDi, Debian's ``libfribidi0``, at run time; see :func:`has_raqm`) shapes each run:
Arabic letters take their joined forms, a right-to-left run reads right to left, and emoji
sequences (ZWJ families, flags, skin tones, keycaps) become one picture. Without it (Pillow's
basic layout) Arabic letters are drawn in their isolated forms in typed order, and an emoji
sequence as its parts. Either way a line is laid out run after run from left to right: a line
that mixes right-to-left and left-to-right words keeps their typed order.

Colour emoji fonts (CBDT bitmaps, e.g. Noto Color Emoji) have a single pixel size (109 px): their
runs are drawn at that size in their own colours (``embedded_color``) and scaled to the text size.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

REPLACEMENT = "\ufffd"  # drawn for a character no installed font has
ASCII_REPLACEMENT = "?"  # the same with Pillow's built-in font, which lacks U+FFFD
ELLIPSIS = "\u2026"
EMOJI_PRESENTATION = "\ufe0f"  # variation selector 16: "draw the character before as an emoji"
ZERO_WIDTH_JOINER = "\u200d"
# Variable fonts (Noto Sans CJK's default is Thin) are drawn at this weight: OpenType's Regular.
REGULAR_WEIGHT = 400
# Characters that belong to the one before them (they never start a run or a line): combining
# marks, format characters (ZWJ, ...), and the emoji modifiers (skin tones) and tag characters
# (subdivision flags).
JOINING_CATEGORIES = frozenset({"Mn", "Mc", "Me", "Cf"})
JOINING_RANGES = ((0xFE00, 0xFE0F), (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))
REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)  # flags: two of them make one
# Characters of no script (spaces, punctuation, digits): they stay in the font of the run they
# follow when it has them, so that a right-to-left run is not cut at every space.
NEUTRAL_CATEGORIES = frozenset({"Zs", "Nd", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"})
# Resampling of colour-emoji bitmaps from their fixed size to the text size.
EMOJI_RESAMPLING = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class FontFile:
    """A font the pictures may use, and where it is when installed.

    Attributes:
        name: the face, for messages.
        package: the Python package holding ``file``; ``None``: ``file`` is an absolute path.
        file: the file name inside ``package``, or an absolute path (a system font).
        index: the face within a font collection (``.ttc``), 0 for a single font.
        emoji: an emoji font: preferred for a character followed by U+FE0F, and never kept for
            the spaces and punctuation after an emoji.
    """

    name: str
    package: str | None
    file: str
    index: int
    emoji: bool

    def locate(self) -> Path | None:
        """The installed file, or ``None``."""
        if self.package is None:
            path = Path(self.file)
        else:
            try:
                path = Path(str(importlib.resources.files(self.package) / self.file))
            except ModuleNotFoundError:
                return None
        return path if path.is_file() else None


NOTO = "manimgx_fonts"  # pip install manimgx-fonts (requirements.txt)
NOTO_CJK = "manimgx_fonts_cjk"  # pip install manimgx-fonts-cjk (requirements.txt)
DEBIAN_NOTO = "/usr/share/fonts/truetype/noto"  # apt-get install fonts-noto-core, -color-emoji
DEBIAN_NOTO_CJK = "/usr/share/fonts/opentype/noto"  # apt-get install fonts-noto-cjk
DEBIAN_DEJAVU = "/usr/share/fonts/truetype/dejavu"  # apt-get install fonts-dejavu-core
# The scripts of the Noto Sans faces in manimgx-fonts besides Latin, Greek and Cyrillic.
NOTO_SCRIPTS = (
    "Arabic",
    "Hebrew",
    "Armenian",
    "Georgian",
    "Devanagari",
    "Bengali",
    "Gujarati",
    "Gurmukhi",
    "Kannada",
    "Malayalam",
    "Oriya",
    "Sinhala",
    "Tamil",
    "Telugu",
    "Thai",
    "Lao",
    "Khmer",
    "Myanmar",
    "Ethiopic",
)
# Noto Sans CJK collections hold JP, KR, SC, TC, HK in this order: SC (2), Simplified Chinese
# glyph forms; kana and hangul are the same in every face.
CJK_FACE = 2
# Tried in this order for each character: text faces first (Latin, Greek, Cyrillic, then the
# other scripts, then CJK and symbols), colour emoji before monochrome ones, DejaVu last.
FONT_FILES: tuple[FontFile, ...] = (
    FontFile("Noto Sans", NOTO, "NotoSans[wght].ttf", 0, emoji=False),
    FontFile("Noto Sans", None, f"{DEBIAN_NOTO}/NotoSans-Regular.ttf", 0, emoji=False),
    *(
        FontFile(f"Noto Sans {script}", NOTO, f"NotoSans{script}[wght].ttf", 0, emoji=False)
        for script in NOTO_SCRIPTS
    ),
    FontFile("Noto Sans CJK SC", NOTO_CJK, "NotoSansCJK-VF.otf.ttc", CJK_FACE, emoji=False),
    FontFile(
        "Noto Sans CJK SC",
        None,
        f"{DEBIAN_NOTO_CJK}/NotoSansCJK-Regular.ttc",
        CJK_FACE,
        emoji=False,
    ),
    FontFile("Noto Sans Symbols", NOTO, "NotoSansSymbols[wght].ttf", 0, emoji=False),
    FontFile("Noto Color Emoji", None, f"{DEBIAN_NOTO}/NotoColorEmoji.ttf", 0, emoji=True),
    FontFile("Noto Emoji", NOTO, "NotoEmoji[wght].ttf", 0, emoji=True),
    FontFile("DejaVu Sans", None, f"{DEBIAN_DEJAVU}/DejaVuSans.ttf", 0, emoji=False),
)


def has_raqm() -> bool:
    """Whether Pillow shapes text with raqm (joined Arabic, right-to-left runs, emoji sequences)."""
    return bool(features.check_feature("raqm"))


# ----------------------------------------------------------------------------- faces


class Face:
    """One installed font face: what it covers and the font objects to draw with.

    Args:
        source: the :class:`FontFile` it was found from.
        path: the file.
    """

    def __init__(self, source: FontFile, path: Path) -> None:
        self.source = source
        self.path = path

    @functools.cached_property
    def _tables(self) -> tuple[frozenset[int], int | None]:
        """``(code points with a glyph, the only pixel size of a bitmap font or None)``."""
        from fontTools.ttLib import TTFont

        font = TTFont(self.path, fontNumber=self.source.index, lazy=True)
        try:
            chars = frozenset(font.getBestCmap() or ())
            strike = None
            if "CBLC" in font:
                strike = max(s.bitmapSizeTable.ppemY for s in font["CBLC"].strikes)
            elif "sbix" in font:
                strike = max(font["sbix"].strikes)
        finally:
            font.close()
        return chars, strike

    @property
    def emoji(self) -> bool:
        return self.source.emoji

    @property
    def strike(self) -> int | None:
        """The only size a bitmap (colour emoji) font draws at, in px; ``None``: scalable."""
        return self._tables[1]

    def covers(self, char: str) -> bool:
        """Whether the face has a glyph for ``char`` (one code point)."""
        return ord(char) in self._tables[0]

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        """The face at ``size`` px (a bitmap font: at :attr:`strike`), at Regular weight."""
        return _sized_font(self.path, self.source.index, self.strike or size)


class BuiltinFace(Face):
    """Pillow's own font (Aileron), used only when no font file is installed: ASCII only."""

    def __init__(self) -> None:
        super().__init__(FontFile("Pillow's built-in font", None, "", 0, emoji=False), Path())

    @property
    def strike(self) -> int | None:
        return None

    def covers(self, char: str) -> bool:
        return " " <= char <= "~"

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        return ImageFont.load_default(size)


@functools.lru_cache(maxsize=128)
def _sized_font(path: Path, index: int, size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(path), size, index=index)
    try:
        axes = font.get_variation_axes()
    except OSError:  # not a variable font
        return font
    weights = [
        min(max(REGULAR_WEIGHT, axis["minimum"]), axis["maximum"])
        if axis["name"] in (b"Weight", "Weight")
        else axis["default"]
        for axis in axes
    ]
    font.set_variation_by_axes(weights)
    return font


@functools.cache
def installed_faces() -> tuple[Face, ...]:
    """The faces of :data:`FONT_FILES` that are installed, in order (one per file); Pillow's
    built-in font when none is."""
    faces: list[Face] = []
    seen: set[tuple[Path, int]] = set()
    for source in FONT_FILES:
        path = source.locate()
        if path is None or (path.resolve(), source.index) in seen:
            continue
        seen.add((path.resolve(), source.index))
        faces.append(Face(source, path))
    if not faces:
        logger.warning(
            "no font for the pictures' text is installed (pip install manimgx-fonts, see "
            "requirements.txt): Pillow's built-in font draws ASCII only"
        )
        return (BuiltinFace(),)
    logger.debug("fonts: %s", ", ".join(f"{f.source.name} ({f.path})" for f in faces))
    return tuple(faces)


# ----------------------------------------------------------------------------- characters


def _joins_previous(char: str) -> bool:
    """Whether ``char`` belongs to the character before it (a mark, a joiner, a modifier)."""
    code = ord(char)
    return unicodedata.category(char) in JOINING_CATEGORIES or any(
        low <= code <= high for low, high in JOINING_RANGES
    )


def _is_invisible(char: str) -> bool:
    """A format character (U+200D, ...) or a variation selector: nothing to draw by itself."""
    return unicodedata.category(char) == "Cf" or "\ufe00" <= char <= "\ufe0f"


def _is_regional_indicator(char: str) -> bool:
    return REGIONAL_INDICATORS[0] <= ord(char) <= REGIONAL_INDICATORS[1]


def clusters(text: str) -> list[str]:
    """``text`` cut where a line may be cut: a character with its marks and joiners, an emoji
    sequence joined by U+200D, a flag (two regional indicators) each stay whole."""
    out: list[str] = []
    for char in text:
        if out and (
            _joins_previous(char)
            or out[-1].endswith(ZERO_WIDTH_JOINER)
            or (
                _is_regional_indicator(char)
                and len(out[-1]) == 1
                and _is_regional_indicator(out[-1])
            )
        ):
            out[-1] += char
        else:
            out.append(char)
    return out


# ----------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Run:
    """Characters drawn with one face."""

    face: Face
    text: str


class FontStack:
    """The installed faces at one size: measures and draws a line of any text.

    Args:
        size: the text size in px (the em of the first face).
        faces: the faces in order of preference (default: :func:`installed_faces`).
    """

    def __init__(self, size: int, faces: Sequence[Face] | None = None) -> None:
        self.size = size
        self.faces = tuple(installed_faces() if faces is None else faces)
        ascent, descent = self.faces[0].font(size).getmetrics()
        self.ascent = ascent  # px from the top of a line to its baseline
        self.line_height = ascent + descent  # px between two lines' tops
        self._choices: dict[tuple[str, bool], Face | None] = {}

    def _face_for(self, char: str, emoji: bool) -> Face | None:
        """The first face that has ``char`` (emoji faces first when ``emoji``), or ``None``."""
        key = (char, emoji)
        if key not in self._choices:
            order = self.faces
            if emoji:
                order = tuple(f for f in self.faces if f.emoji) + order
            self._choices[key] = next((f for f in order if f.covers(char)), None)
            if self._choices[key] is None and not _joins_previous(char):
                _log_missing(char)
        return self._choices[key]

    def _replacement(self) -> tuple[Face, str]:
        face = self._face_for(REPLACEMENT, False)
        if face is not None:
            return face, REPLACEMENT
        return self.faces[0], ASCII_REPLACEMENT

    def _next_script_faces(self, text: str) -> list[Face | None]:
        """Per position, the face of the next character after it that belongs to a script
        (not a space, punctuation, digit, mark or joiner); ``None`` where there is none."""
        faces: list[Face | None] = [None] * len(text)
        following: Face | None = None
        for position in range(len(text) - 1, -1, -1):
            faces[position] = following
            char = text[position]
            category = unicodedata.category(char)
            if not (category in NEUTRAL_CATEGORIES or category == "Cc" or _joins_previous(char)):
                emoji = text[position + 1 : position + 2] == EMOJI_PRESENTATION
                following = self._face_for(char, emoji)
        return faces

    @staticmethod
    def _stays_in_run(current: Face, char: str, next_face: Face | None) -> bool:
        """Whether a space, punctuation or digit stays in the run before it: when ``current``
        (not an emoji face) has it and also draws the next character of a script, so that a
        right-to-left run keeps its inner spaces but not a trailing one."""
        return (
            not current.emoji
            and unicodedata.category(char) in NEUTRAL_CATEGORIES
            and current.covers(char)
            and next_face is current
        )

    def runs(self, text: str) -> list[Run]:
        """``text`` as runs of characters, each with the face that draws it (characters no face
        has are replaced by U+FFFD; control characters by spaces; invisible joiners no face has
        are left out)."""
        pieces: list[tuple[Face, str]] = []
        next_faces = self._next_script_faces(text)
        for position, char in enumerate(text):
            if unicodedata.category(char) == "Cc":
                char = " "
            current = pieces[-1][0] if pieces else None
            if current is not None and _joins_previous(char):
                if current.covers(char):
                    pieces[-1] = (current, pieces[-1][1] + char)
                    continue
                if _is_invisible(char):
                    continue  # a selector or joiner the run's face does without
            if current is not None and self._stays_in_run(current, char, next_faces[position]):
                pieces[-1] = (current, pieces[-1][1] + char)
                continue
            emoji = text[position + 1 : position + 2] == EMOJI_PRESENTATION
            face = self._face_for(char, emoji)
            if face is None:
                if _is_invisible(char):
                    continue
                face, char = self._replacement()
            if current is face:
                pieces[-1] = (face, pieces[-1][1] + char)
            else:
                pieces.append((face, char))
        return [Run(face, chars) for face, chars in pieces]

    def _run_length(self, run: Run) -> float:
        length = run.face.font(self.size).getlength(run.text)
        if run.face.strike is not None:
            length *= self.size / run.face.strike
        return length

    def length(self, text: str) -> float:
        """Width of ``text`` in px, as :meth:`draw` draws it."""
        return sum(self._run_length(run) for run in self.runs(text))

    def draw(self, image: Image.Image, xy: tuple[float, float], text: str, fill: Color) -> None:
        """Draw one line of ``text`` on ``image`` (RGB), its top-left corner at ``xy``.

        Text faces draw in ``fill``; colour emoji in their own colours.
        """
        x, top = xy
        baseline = top + self.ascent
        draw = ImageDraw.Draw(image)
        for run in self.runs(text):
            if run.face.strike is None:
                font = run.face.font(self.size)
                draw.text((x, baseline), run.text, fill=fill, font=font, anchor="ls")
            else:
                _paste_bitmap_run(image, (x, baseline), run, self.size)
            x += self._run_length(run)


def _paste_bitmap_run(image: Image.Image, origin: tuple[float, float], run: Run, size: int) -> None:
    """A colour-emoji run drawn at its font's only size, scaled to ``size`` and pasted with its
    transparency, its baseline at ``origin = (x, baseline)``."""
    font = run.face.font(size)
    strike = run.face.strike or size
    ascent, descent = font.getmetrics()
    width = max(1, math.ceil(font.getlength(run.text)))
    tile = Image.new("RGBA", (width, ascent + descent), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((0, ascent), run.text, font=font, anchor="ls", embedded_color=True)
    scale = size / strike
    scaled = (max(1, round(width * scale)), max(1, round((ascent + descent) * scale)))
    # Premultiplied alpha while resampling: no dark fringes from transparent pixels.
    small = tile.convert("RGBa").resize(scaled, EMOJI_RESAMPLING).convert("RGBA")
    x, baseline = origin
    image.paste(small, (round(x), round(baseline - ascent * scale)), small)


@functools.cache
def _log_missing(char: str) -> None:
    logger.warning(
        "no installed font has %r (U+%04X %s): drawn as U+FFFD",
        char,
        ord(char),
        unicodedata.name(char, "unnamed"),
    )


@functools.lru_cache(maxsize=16)
def font_stack(size: int) -> FontStack:
    """The :class:`FontStack` of the installed faces at ``size`` px (made once per size)."""
    return FontStack(size)


# ----------------------------------------------------------------------------- lines


def _split_word(word: str, font: FontStack, max_width: int) -> list[str]:
    """A word wider than ``max_width`` cut between clusters (at least one cluster a piece)."""
    pieces: list[str] = []
    for cluster in clusters(word):
        if pieces and font.length(pieces[-1] + cluster) <= max_width:
            pieces[-1] += cluster
        else:
            pieces.append(cluster)
    return pieces


def _with_ellipsis(text: str, font: FontStack, max_width: int) -> str:
    """``text`` shortened (by clusters) until it fits ``max_width`` px with an ellipsis after."""
    parts = clusters(text)

    def shortened(count: int) -> str:
        return "".join(parts[:count]).rstrip() + ELLIPSIS

    low, high = 0, len(parts)  # the most clusters that fit: at least low, fewer than high + 1
    while low < high:
        middle = (low + high + 1) // 2
        if font.length(shortened(middle)) <= max_width:
            low = middle
        else:
            high = middle - 1
    return shortened(low)


def fit_text(text: str, font: FontStack, max_width: int) -> str:
    """``text`` on one line, cut with an ellipsis if it is wider than ``max_width`` px."""
    if font.length(text) <= max_width:
        return text
    return _with_ellipsis(text, font, max_width)


def wrap_text(text: str, font: FontStack, max_width: int, *, max_lines: int | None) -> list[str]:
    """``text`` in lines no wider than ``max_width`` px: cut between words, and inside a word
    that is wider than a line (a long URL, a sentence in Chinese or Japanese without spaces).

    Args:
        max_lines: keep at most this many lines (at least 1), the last one ending with an
            ellipsis when text is left out; ``None``: all.
    Returns:
        at least one line (``[""]`` for a text without words).
    """
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines={max_lines}: expected at least 1")
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.length(candidate) <= max_width:
            lines[-1] = candidate
            continue
        pieces = [word] if font.length(word) <= max_width else _split_word(word, font, max_width)
        lines += pieces
        if max_lines is not None and len(lines) > max_lines:
            # More text than lines: the last line kept says so.
            last = _with_ellipsis(lines[max_lines - 1], font, max_width)
            return [*lines[: max_lines - 1], last]
    return lines or [""]
