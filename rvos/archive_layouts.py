"""What a submission archive holds, read back: its member layout, found from its folders, and its
inventory (videos, expressions or annotators, frames, frame sizes), checked before any mask is
decoded.

The layouts are those :data:`rvos.archive.ARCHIVE_WRITERS` writes, by the same names:

``mevis``            ``<video_id>/<exp_id>/<frame_name>.png``: video folders at the top level
``ref_youtube_vos``  ``Annotations/<video_id>/<exp_id>/<frame_name>.png``: one top-level folder,
                     ``Annotations``
``ref_davis17``      ``anno_<k>/<video_id>/<frame_name>.png``: only annotator folders at the top
                     level; each PNG is indexed, pixel ``i`` the annotator's object ``i``

An archive is an :class:`Inventory`: per video, its *groups* (the expressions; Ref-DAVIS17: the
annotators) and the frames each holds. Two inventories compare with :func:`first_difference`,
which names the first video, group or frame one has and the other lacks; a split's metadata
gives the inventory an archive must have (:func:`split_inventory`). :func:`survey` reads each
member's header (and, for indexed PNGs, its labels) to find each video's frame size.

Members are read with :class:`rvos.archive_reader.PredictionArchive` (zip files and folders).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rvos.archive_limits import ArchiveLimits, default_limits
from rvos.archive_reader import PNG_SUFFIX, ArchiveError, PredictionArchive, check_png, png_size
from rvos.davis import ANNOTATOR_DIR, annotator_dir, decode_label_png
from rvos.progress import progress_bar
from rvos.registry import Registry
from rvos.splits import Split

# anno_<k>: an annotator's folder (rvos.davis.ANNOTATOR_DIR), k captured.
_ANNOTATOR_FOLDER = re.compile(
    re.escape(ANNOTATOR_DIR.format(annotator="@")).replace("@", r"(\d+)")
)


@dataclass(frozen=True)
class MemberLayout:
    """How an archive's members are laid out (the reading side of an archive writer).

    Attributes:
        name: the archive writer's name (``data.archive``, :data:`rvos.archive.ARCHIVE_WRITERS`).
        members: the member path, for messages.
        wrapper: the folder every member sits in (``Annotations``), or ``None``.
        labels: one indexed PNG per annotator and frame (its groups are annotators, its objects
            the labels ``1..n``) instead of one mode-L PNG per expression and frame.
    """

    name: str
    members: str
    wrapper: str | None
    labels: bool

    @property
    def group(self) -> str:
        """What a group of a video is, for messages."""
        return "annotator" if self.labels else "expression"


MEVIS_MEMBERS = MemberLayout("mevis", "<video>/<exp_id>/<frame>.png", None, False)
REF_YOUTUBE_VOS_MEMBERS = MemberLayout(
    "ref_youtube_vos", "Annotations/<video>/<exp_id>/<frame>.png", "Annotations", False
)
REF_DAVIS17_MEMBERS = MemberLayout("ref_davis17", "anno_<k>/<video>/<frame>.png", None, True)
# data.archive -> how to read it back; one entry per archive writer.
MEMBER_LAYOUTS: Registry[MemberLayout] = Registry(
    "archive layout",
    {m.name: m for m in (MEVIS_MEMBERS, REF_YOUTUBE_VOS_MEMBERS, REF_DAVIS17_MEMBERS)},
)


def annotator_number(folder: str) -> int:
    """``k`` of an annotator's folder ``anno_<k>``.

    Raises:
        ValueError: ``folder`` is not an annotator's folder.
    """
    match = _ANNOTATOR_FOLDER.fullmatch(folder)
    if match is None:
        raise ValueError(f"{folder!r} is not an annotator's folder ({ANNOTATOR_DIR})")
    return int(match.group(1))


def natural_key(name: str) -> list[int | str]:
    """Sort key putting ``"2"`` before ``"10"`` (ids and frame names of archives)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def detect_layout(archive: PredictionArchive) -> MemberLayout:
    """The layout of an archive, from its top-level folders (see the module docstring).

    Raises:
        ArchiveError: the archive has no folder at its top level.
    """
    top = archive.top_level()
    if not top:
        raise ArchiveError(
            f"{archive.path} holds no folders of masks (expected {MEVIS_MEMBERS.members} or "
            "another benchmark's layout)"
        )
    if all(_ANNOTATOR_FOLDER.fullmatch(folder) for folder in top):
        return REF_DAVIS17_MEMBERS
    if top == {REF_YOUTUBE_VOS_MEMBERS.wrapper}:
        return REF_YOUTUBE_VOS_MEMBERS
    return MEVIS_MEMBERS


@contextlib.contextmanager
def open_archive(
    path: str | Path, layout: MemberLayout | None = None, limits: ArchiveLimits | None = None
) -> Iterator[tuple[PredictionArchive, MemberLayout]]:
    """An archive opened for reading, stepped into its wrapper folder, with its layout
    (``layout``: known already; ``None``: :func:`detect_layout`), read within ``limits``
    (``None``: ``evaluation.limits`` of ``configs/pipeline.yaml``: archives may come from
    anyone)."""
    with PredictionArchive(path, limits or default_limits()) as archive:
        layout = layout or detect_layout(archive)
        if layout.wrapper is not None:
            archive.step_into(layout.wrapper)
        yield archive, layout


def member_parts(
    layout: MemberLayout, video_id: str, group: str, frame_name: str
) -> tuple[str, str, str]:
    """The three levels :meth:`PredictionArchive.read` takes for a frame of a group."""
    file_name = frame_name + PNG_SUFFIX
    return (group, video_id, file_name) if layout.labels else (video_id, group, file_name)


# video_id -> group (exp_id or anno_<k>) -> frame names, in order
Videos = dict[str, dict[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Inventory:
    """The videos, groups and frames of an archive, or those a split asks for.

    Attributes:
        source: what it describes, for messages (an archive's path, ``the split <root>``).
        layout: the member layout.
        videos: ``{video_id: {group: frame names}}``; groups are expression ids (Ref-DAVIS17:
            annotator folders ``anno_<k>``); everything in order (a split's, else natural).
        objects: label layouts from a split: ``{(video_id, anno_<k>): number of objects}``
            (the annotator's expressions); empty otherwise.
    """

    source: str
    layout: MemberLayout
    videos: Videos
    objects: dict[tuple[str, str], int] = field(default_factory=dict)

    def frame_names(self, video_id: str) -> tuple[str, ...]:
        """The frames of a video (its first group's: :func:`check_frames_agree` makes them one
        list)."""
        return next(iter(self.videos[video_id].values()))


def archive_inventory(archive: PredictionArchive, layout: MemberLayout) -> Inventory:
    """What ``archive`` holds, in ``layout``: the PNG files of each video's groups (other
    files are not masks and are left out)."""
    found: dict[str, dict[str, list[str]]] = {}
    for top in archive.top_level():
        for inner in archive.folders(top):
            video_id, group = (inner, top) if layout.labels else (top, inner)
            names = archive.file_names(top, inner) or set()
            frames = [n[: -len(PNG_SUFFIX)] for n in names if n.endswith(PNG_SUFFIX)]
            found.setdefault(video_id, {})[group] = sorted(frames, key=natural_key)
    videos = {
        video_id: {g: tuple(found[video_id][g]) for g in sorted(found[video_id], key=natural_key)}
        for video_id in sorted(found, key=natural_key)
    }
    return Inventory(str(archive.path), layout, videos)


def split_inventory(split: Split, layout: MemberLayout) -> Inventory:
    """What a complete archive of ``split`` holds in ``layout``: every listed expression (label
    layouts: every annotator, with as many objects as it has expressions) and every listed frame.
    """
    videos: Videos = {}
    objects: dict[tuple[str, str], int] = {}
    for video_id, video in split.videos.items():
        if layout.labels:
            groups = {annotator_dir(k): exp_ids for k, exp_ids in video.annotator_groups().items()}
            if not groups:
                raise ArchiveError(
                    f"the split {split.root} has no annotators (data.layout={split.layout.name}): "
                    f"it cannot check archives in the {layout.name} layout ({layout.members})"
                )
            objects.update({(video_id, g): len(exp_ids) for g, exp_ids in groups.items()})
        else:
            groups = dict.fromkeys(video.expressions)
        videos[video_id] = dict.fromkeys(groups, video.frame_names)
    return Inventory(f"the split {split.root}", layout, videos, objects)


def first_difference(inventory: Inventory, reference: Inventory) -> str | None:
    """The first video, group or frame that ``inventory`` lacks or has beyond ``reference``, in
    one line naming ``inventory``'s source (``None``: they list the same)."""
    group = inventory.layout.group

    def missing(what: str) -> str:
        return f"{inventory.source}: {what} is missing ({reference.source} has it)"

    def extra(what: str) -> str:
        return f"{inventory.source}: {what} is not in {reference.source}"

    for video_id, groups in reference.videos.items():
        if video_id not in inventory.videos:
            return missing(f"video {video_id!r}")
        theirs = inventory.videos[video_id]
        for name, frames in groups.items():
            where = f"video {video_id!r}, {group} {name!r}"
            if name not in theirs:
                return missing(where)
            has = set(theirs[name])
            for frame in frames:
                if frame not in has:
                    return missing(f"{where}, frame {frame!r}")
            wanted = set(frames)
            for frame in theirs[name]:
                if frame not in wanted:
                    return extra(f"{where}, frame {frame!r}")
        for name in theirs:
            if name not in groups:
                return extra(f"video {video_id!r}, {group} {name!r}")
    for video_id in inventory.videos:
        if video_id not in reference.videos:
            return extra(f"video {video_id!r}")
    return None


def check_frames_agree(inventory: Inventory) -> None:
    """Every group of a video holds the same frames (an archive writer writes a video's frames
    once for all its groups).

    Raises:
        ArchiveError: naming the video, the two groups and a frame in one of them only.
    """
    group = inventory.layout.group
    for video_id, groups in inventory.videos.items():
        (first, frames), *others = groups.items()
        for name, theirs in others:
            odd = sorted(set(frames) ^ set(theirs), key=natural_key)
            if odd:
                raise ArchiveError(
                    f"{inventory.source}: video {video_id!r}: {group} {name!r} and {first!r} "
                    f"hold different frames (e.g. {odd[0]!r}); every {group} of a video needs "
                    "the same frames"
                )


@dataclass(frozen=True)
class Survey:
    """What an archive's member headers say.

    Attributes:
        sizes: ``{video_id: (H, W)}``, every frame of the video.
        max_labels: label layouts: ``{(video_id, anno_<k>): largest label on any frame}``.
    """

    sizes: dict[str, tuple[int, int]]
    max_labels: dict[tuple[str, str], int]


def survey(
    archive: PredictionArchive,
    inventory: Inventory,
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    reference: str = "",
) -> Survey:
    """Read the header of every member of ``inventory`` (label layouts: decode it, for its
    labels); each video's frames must have one size, ``sizes[video_id]`` when given.

    Args:
        archive: the archive ``inventory`` lists, opened (:func:`open_archive`).
        sizes: the frame size each video must have, or ``None``: the size of its first member.
        reference: where ``sizes`` come from, for messages.
    Raises:
        ArchiveError: the first member of another size, naming it and both sizes.
        ValueError: a member that is not a readable PNG (naming it).
    """
    layout = inventory.layout
    found: dict[str, tuple[int, int]] = {}
    max_labels: dict[tuple[str, str], int] = {}
    bar = progress_bar(
        inventory.videos.items(),
        desc=f"check {Path(inventory.source).name}",
        unit="video",
        leave=False,
    )
    for video_id, groups in bar:
        expected = sizes[video_id] if sizes is not None else None
        for group, frames in groups.items():
            for frame in frames:
                parts = member_parts(layout, video_id, group, frame)
                where = f"{inventory.source}: video {video_id!r}, {layout.group} {group!r}, frame {frame!r}"
                data = archive.read(*parts)
                if layout.labels:
                    labels = decode_label_png(data, archive.where(*parts))
                    size = labels.shape
                    key = (video_id, group)
                    max_labels[key] = max(max_labels.get(key, 0), int(labels.max()))
                else:
                    check_png(data, archive.where(*parts))  # cut short or a failing chunk CRC
                    size = png_size(data, archive.where(*parts), archive.limits.max_pixels)
                if expected is None:
                    expected = found[video_id] = size
                    continue
                if size != expected:
                    other = f"in {reference}" if sizes is not None else "its video's first frame"
                    raise ArchiveError(f"{where} is {_wxh(size)}, {other} {_wxh(expected)}")
        found.setdefault(video_id, expected)
    return Survey(found, max_labels)


def _wxh(size: tuple[int, int]) -> str:
    """``(H, W)`` as ``WxH``, as images are described."""
    return f"{size[1]}x{size[0]}"
