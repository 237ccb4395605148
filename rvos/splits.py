"""Benchmark splits: every supported file layout read into the same ``Video``/``Expression`` records.

A layout (``data.layout``, registered by name in :data:`SPLIT_LAYOUTS`) says where a split keeps
its expressions, frames and ground truth relative to ``data.root``:

``mevis``            MeViS v1 and v2: ``meta_expressions.json``, ``JPEGImages/<video>/<frame>.jpg``,
                     optional ``mask_dict.json`` (COCO RLE per ``anno_id``). A v2 expression with an
                     empty ``anno_id`` list refers to nothing.
``ref_youtube_vos``  ``meta_expressions/valid/meta_expressions.json`` and ``valid/JPEGImages``; the
                     valid file also lists the test videos, dropped as those listed in
                     ``meta_expressions/test/meta_expressions.json`` (ReferDINO's
                     ``inference_ytvos.py``). No public ground truth.
``ref_davis17``      Ref-DAVIS17 converted to the Ref-YouTube-VOS layout (ReferDINO's
                     ``assets/DATA.md``): ``meta_expressions/valid/meta_expressions.json``,
                     ``valid/JPEGImages``, ground truth ``valid/Annotations/<video>/<frame>.png``
                     (DAVIS 2017 unsupervised, indexed). Each object has four consecutive
                     expressions, one per annotator (expression ``i``: annotator ``i % 4``,
                     object ``i // 4``), as ``inference_davis.py`` indexes them.

Every layout goes through the same checks before anything is written: a video, expression or
frame id that is empty or would escape its output folder (``..``, path separators) is refused
with a message naming it; so are empty expressions and frame lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from rvos.io import safe_component
from rvos.registry import Registry

logger = logging.getLogger(__name__)

FRAME_SUFFIX = ".jpg"
# What opening a frame raises when it cannot be read: missing, not an image, or a header that
# claims more pixels than Pillow decodes (a decompression bomb).
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)


class DataError(ValueError):
    """A problem with the input split; the message names the video/expression/frame."""


@dataclass(frozen=True)
class Expression:
    """One referring expression of a video.

    Attributes:
        exp_id: its id in the split's metadata.
        text: the sentence, as written.
        anno_ids: ground-truth annotation ids (MeViS ``anno_id``); empty: no target (MeViS v2) or
            no ground truth in the metadata.
        annotator: layouts with several annotators per object (Ref-DAVIS17): who wrote it;
            ``None`` elsewhere.
        obj_idx: with ``annotator``: the object it refers to, ``0..n-1`` in metadata order (its
            label in an annotator's indexed masks is ``obj_idx + 1``).
    """

    exp_id: str
    text: str
    anno_ids: tuple[str, ...] = ()
    annotator: int | None = None
    obj_idx: int | None = None


@dataclass(frozen=True)
class Video:
    """One video of a split: its frame names in order and its expressions."""

    video_id: str
    frame_names: tuple[str, ...]
    expressions: dict[str, Expression]

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def annotator_groups(self) -> dict[int, list[str]]:
        """``{annotator: [exp_id, ...]}``, each list in ``obj_idx`` order; empty when the layout
        has no annotators."""
        groups: dict[int, list[tuple[int, str]]] = {}
        for exp_id, expression in self.expressions.items():
            if expression.annotator is not None and expression.obj_idx is not None:
                groups.setdefault(expression.annotator, []).append((expression.obj_idx, exp_id))
        return {k: [e for _, e in sorted(members)] for k, members in sorted(groups.items())}


@dataclass(frozen=True)
class SplitLayout:
    """Where a benchmark split keeps its files, relative to ``data.root``.

    Attributes:
        name: the registered name (``data.layout``).
        title: what ``data.root`` should be, for messages.
        meta_file: the expressions (``{"videos": {video_id: {"frames": [...],
            "expressions": {exp_id: {"exp": ...}}}}}``).
        frames_dir: ``<frames_dir>/<video_id>/<frame_name>.jpg``.
        excluded_meta_file: a second metadata file whose videos are dropped, or ``None``.
        mask_file: MeViS-style ground truth (``anno_id -> [COCO RLE or null per frame]``), or
            ``None``.
        annotations_dir: DAVIS-style ground truth, ``<annotations_dir>/<video_id>/<frame>.png``
            indexed by object, or ``None``.
        annotators: expressions come in groups of this many per object, one per annotator
            (Ref-DAVIS17: 4), or ``None``.
    """

    name: str
    title: str
    meta_file: str
    frames_dir: str
    excluded_meta_file: str | None
    mask_file: str | None
    annotations_dir: str | None
    annotators: int | None


MEVIS_LAYOUT = SplitLayout(
    name="mevis",
    title="a MeViS split folder",
    meta_file="meta_expressions.json",
    frames_dir="JPEGImages",
    excluded_meta_file=None,
    mask_file="mask_dict.json",
    annotations_dir=None,
    annotators=None,
)
REF_YOUTUBE_VOS_LAYOUT = SplitLayout(
    name="ref_youtube_vos",
    title="the Ref-YouTube-VOS folder (meta_expressions/, valid/)",
    meta_file="meta_expressions/valid/meta_expressions.json",
    frames_dir="valid/JPEGImages",
    # The valid file lists the 202 valid and the 305 test videos (ReferDINO's inference_ytvos.py).
    excluded_meta_file="meta_expressions/test/meta_expressions.json",
    mask_file=None,
    annotations_dir=None,
    annotators=None,
)
REF_DAVIS17_LAYOUT = SplitLayout(
    name="ref_davis17",
    title="the Ref-DAVIS17 folder converted to the Ref-YouTube-VOS layout (meta_expressions/, valid/)",
    meta_file="meta_expressions/valid/meta_expressions.json",
    frames_dir="valid/JPEGImages",
    excluded_meta_file=None,
    mask_file=None,
    # DAVIS 2017 Annotations_unsupervised/480p, moved here by the conversion script.
    annotations_dir="valid/Annotations",
    # Two annotators, each a first-frame and a full-video description (ReferDINO's
    # inference_davis.py and eval_davis.py: anno_0..anno_3).
    annotators=4,
)

# data.layout -> layout. Add an entry for another benchmark's files.
SPLIT_LAYOUTS: Registry[SplitLayout] = Registry(
    "split layout",
    {layout.name: layout for layout in (MEVIS_LAYOUT, REF_YOUTUBE_VOS_LAYOUT, REF_DAVIS17_LAYOUT)},
)


# ----------------------------------------------------------------------------- parsing


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
    anno_ids = entry.get("anno_id", ())
    if not isinstance(anno_ids, list | tuple):
        raise DataError(f"{where}: 'anno_id' must be a list, got {anno_ids!r}")
    odd = [a for a in anno_ids if isinstance(a, bool) or not isinstance(a, str | int)]
    if odd:
        raise DataError(f"{where}: 'anno_id' lists {odd[0]!r}; an id is a string or an integer")
    # Other fields (obj_id, MeViS v2's audio and boxes, ...) are not needed and ignored.
    # As written: ReferDINO feeds the raw text to BERT (only appending "." when it lacks one).
    return Expression(exp_id=exp_id, text=text, anno_ids=tuple(str(a) for a in anno_ids))


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
        if not isinstance(name, str):
            raise DataError(
                f"video {video_id!r}: 'frames' lists {name!r}; a frame name is a string"
            )
        try:
            safe_component(name, "frame name")
        except ValueError as err:
            raise DataError(f"video {video_id!r}: {err}") from None
    if len(set(frames)) != len(frames):
        twice = next(name for name in frames if frames.count(name) > 1)
        raise DataError(f"video {video_id!r}: 'frames' lists frame {twice!r} twice")
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


class _DuplicateKey(ValueError):
    """A JSON object with a key twice (:func:`read_json`)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise _DuplicateKey(twice)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def read_json(path: Path) -> Any:
    """A split's JSON file (metadata, ground truth), as strict JSON: UTF-8 (a byte-order mark is
    skipped), every key once per object (Python's reader would keep only the last of two), no
    ``NaN`` or ``Infinity``.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    try:
        return json.loads(
            path.read_bytes().decode("utf-8-sig"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
        )
    except _DuplicateKey as err:
        raise DataError(
            f"{path}: the key {err.args[0]!r} appears twice in one object (only one would be "
            "read); remove or rename one"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _read_videos_field(path: Path, title: str) -> dict:
    """The ``videos`` object of a metadata file; :class:`DataError` naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path} not found (is data.root {title}?)")
    meta = read_json(path)
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise DataError(f"{path}: no 'videos' object at its top level")
    return videos


def _assign_annotators(video: Video, annotators: int) -> Video:
    """Expression ``i`` (metadata order) -> annotator ``i % annotators``, object ``i // annotators``."""
    count = len(video.expressions)
    if count % annotators:
        raise DataError(
            f"video {video.video_id!r}: {count} expressions, not a multiple of {annotators} "
            f"(this layout has one expression per annotator and object)"
        )
    expressions = {
        exp_id: dataclasses.replace(expression, annotator=i % annotators, obj_idx=i // annotators)
        for i, (exp_id, expression) in enumerate(video.expressions.items())
    }
    return dataclasses.replace(video, expressions=expressions)


# ----------------------------------------------------------------------------- the split


class Split:
    """A benchmark split rooted at ``root``, read through a :class:`SplitLayout`.

    Args:
        root: the folder ``data.root`` names.
        layout: a :class:`SplitLayout` or a registered layout name.
    Raises:
        DataError: a metadata file is missing or invalid, or an id is unsafe (the message names
            the file, video or expression).
    """

    def __init__(self, root: str | Path, layout: SplitLayout | str) -> None:
        self.root = Path(root)
        self.layout = SPLIT_LAYOUTS.lookup(layout) if isinstance(layout, str) else layout
        meta_path = self.root / self.layout.meta_file
        entries = _read_videos_field(meta_path, self.layout.title)
        if self.layout.excluded_meta_file is not None:
            excluded_path = self.root / self.layout.excluded_meta_file
            excluded = set(_read_videos_field(excluded_path, self.layout.title))
            kept = {vid: entry for vid, entry in entries.items() if vid not in excluded}
            logger.info(
                "%s: %d of %d video(s) are listed in %s and left out",
                meta_path,
                len(entries) - len(kept),
                len(entries),
                excluded_path,
            )
            if entries and not kept:
                raise DataError(
                    f"{meta_path}: every video is listed in {excluded_path}: the split has no "
                    "video to run on"
                )
            entries = kept
        if not entries:
            raise DataError(f"{meta_path}: the split has no videos (its 'videos' object is empty)")
        videos = {str(vid): _parse_video(str(vid), entry) for vid, entry in sorted(entries.items())}
        if self.layout.annotators is not None:
            videos = {
                vid: _assign_annotators(video, self.layout.annotators)
                for vid, video in videos.items()
            }
        self.videos: dict[str, Video] = videos

    @property
    def video_ids(self) -> list[str]:
        """All video ids, sorted."""
        return list(self.videos)

    def frame_dir(self, video_id: str) -> Path:
        return self.root / self.layout.frames_dir / video_id

    def frame_paths(self, video_id: str) -> list[Path]:
        """The JPEG of every listed frame, in metadata order."""
        folder = self.frame_dir(video_id)
        return [folder / f"{name}{FRAME_SUFFIX}" for name in self.videos[video_id].frame_names]

    def _frame_folder(self, video_id: str) -> Path:
        """The video's frame folder.

        Raises:
            DataError: it does not exist (named once, not frame by frame).
        """
        folder = self.frame_dir(video_id)
        if not folder.is_dir():
            count = len(self.videos[video_id].frame_names)
            raise DataError(
                f"video {video_id!r}: frame folder {folder} not found ({count} frame(s) listed "
                f"in {Path(self.layout.meta_file).name})"
            )
        return folder

    def check_frames(self, video_id: str) -> tuple[int, int]:
        """Check that every listed frame exists and has the same size; return ``(H, W)``.

        Frame headers are read (cheap); pixel data is decoded when frames are loaded.
        Raises:
            DataError: naming the video and the missing/unreadable/odd-sized frames.
        """
        folder = self._frame_folder(video_id)
        paths = self.frame_paths(video_id)
        missing = [p.name for p in paths if not p.is_file()]
        meta_name = Path(self.layout.meta_file).name
        if missing:
            raise DataError(
                f"video {video_id!r}: {len(missing)} frame(s) listed in {meta_name} "
                f"are missing from {folder}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        listed = {p.name for p in paths}
        extra = sorted(p.name for p in folder.glob(f"*{FRAME_SUFFIX}") if p.name not in listed)
        if extra:
            logger.warning(
                "video %r: %d frame(s) on disk are not listed in %s and are ignored (e.g. %s)",
                video_id,
                len(extra),
                meta_name,
                extra[0],
            )
        sizes = {}
        for path in paths:
            try:
                with Image.open(path) as image:
                    sizes[path.name] = (image.height, image.width)
            except UNREADABLE as err:
                raise DataError(
                    f"video {video_id!r}: frame {path.name} is unreadable ({err})"
                ) from None
        distinct = set(sizes.values())
        if len(distinct) != 1:
            raise DataError(f"video {video_id!r}: frames have different sizes {sorted(distinct)}")
        return distinct.pop()

    def load_frames(self, video_id: str) -> list[Image.Image]:
        """Decode all frames of a video as RGB PIL images, in order.

        Raises:
            DataError: the frame folder is missing, or a frame is missing or unreadable.
        """
        self._frame_folder(video_id)
        images = []
        for path in self.frame_paths(video_id):
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except UNREADABLE as err:
                raise DataError(
                    f"video {video_id!r}: frame {path.name} is unreadable ({err})"
                ) from None
        return images

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """``(H, W)`` of the video's first frame.

        Raises:
            DataError: the frame cannot be read (missing, not an image, too many pixels).
        """
        path = self.frame_paths(video_id)[0]
        try:
            with Image.open(path) as image:
                return image.height, image.width
        except UNREADABLE as err:
            raise DataError(
                f"video {video_id!r}: frame {path.name} is unreadable ({err})"
            ) from None

    def validate(self, video_ids: list[str] | None = None) -> None:
        """Check the frames of ``video_ids`` (all videos by default) before any work starts."""
        for video_id in video_ids if video_ids is not None else self.video_ids:
            self.check_frames(video_id)

    # -- ground truth -------------------------------------------------------------------------

    @property
    def ground_truth_path(self) -> Path | None:
        """Where this layout keeps ground truth (a file or a folder), or ``None`` if it has none."""
        relative = self.layout.mask_file or self.layout.annotations_dir
        return None if relative is None else self.root / relative

    @property
    def has_ground_truth(self) -> bool:
        path = self.ground_truth_path
        return path is not None and path.exists()

    @cached_property
    def mask_dict(self) -> dict[str, list]:
        """``anno_id -> [COCO RLE or None per frame]`` from the layout's ``mask_file``."""
        if self.layout.mask_file is None:
            raise DataError(f"layout {self.layout.name!r} has no mask_dict.json ground truth")
        path = self.root / self.layout.mask_file
        if not path.is_file():
            raise DataError(f"{path} not found: this split has no ground truth")
        masks = read_json(path)
        if not isinstance(masks, dict):
            raise DataError(f"{path}: expected an object mapping anno_id to per-frame RLEs")
        return masks

    def annotation_paths(self, video_id: str) -> list[Path]:
        """DAVIS-style ground truth: the indexed PNG of every listed frame, in order."""
        if self.layout.annotations_dir is None:
            raise DataError(f"layout {self.layout.name!r} has no indexed-PNG ground truth")
        folder = self.root / self.layout.annotations_dir / video_id
        return [folder / f"{name}.png" for name in self.videos[video_id].frame_names]
