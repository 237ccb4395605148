"""Reading a prediction archive: the PNG masks of a zip file or a folder, member by member.

An archive holds ``<video_id>/<exp_id>/<frame_name>.png`` at its top level (MeViS); any
three-level layout reads the same way (Ref-DAVIS17: ``anno_<k>/<video_id>/<frame_name>.png``).
Archives may come from anyone (a challenge server's uploads), so reading one is bounded by
:class:`rvos.archive_limits.ArchiveLimits` whatever it holds, and nothing is ever extracted to
disk:

1. the zip's end record gives the number of members and the size of its directory, checked
   before the directory is read;
2. the directory is checked as a whole before any member is inflated: every name a plain
   relative path (no absolute path, no ``..``, no backslash) and none twice, no member encrypted
   or compressed with a method other than stored or deflate, and each member's declared size,
   compression ratio and their total within the limits;
3. a member is read by its directory entry (:class:`ZipMember`, plain data a worker process
   reads on its own), inflated as a stream that stops one byte past its declared size, then
   checked against its CRC;
4. a PNG's width and height are read from its header and checked (pixels, and the ground truth's
   size, by the metrics) before it is decoded.

Any failure refuses the archive: :class:`ArchiveError`, one line naming the archive and the
member (:mod:`rvos.evaluation` prints it and exits with status 1). Members the metric does not
ask for are not read; they are counted (:class:`UnexpectedMembers`) and reported with the
scores. The writers are in :mod:`rvos.archive`; the metrics that read archives in
:mod:`rvos.mevis_metric` and :mod:`rvos.davis_metric`.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from rvos.archive_limits import MIB, SECTION, ArchiveLimits

PNG_SUFFIX = ".png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The first chunk of every PNG: length 13, "IHDR", width and height (big-endian), ...
PNG_IHDR = struct.Struct(">I4sII")

# Zip records (APPNOTE.TXT 4.3): the end of central directory record, the ZIP64 locator and
# end record that replace its counts when they overflow, and a member's local header.
END_RECORD = struct.Struct("<4s4H2LH")
END_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
ZIP64_END_SIGNATURE = b"PK\x06\x06"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
LOCAL_SIGNATURE = b"PK\x03\x04"
MAX_COMMENT = 0xFFFF  # the end record's comment is at most this long
ENCRYPTED_FLAG = 0x1
UTF8_FLAG = 0x800
READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# Compressed bytes read from the file per step while inflating a member.
READ_CHUNK = 1 << 16
# Names of unexpected members listed in the log and the JSON (the count is always whole).
SHOWN_UNEXPECTED = 20

DAMAGED = "the archive is damaged; write or download it again"
RAISE_LIMIT = "if it is genuine, raise the limit (docs/benchmarks.md, Limits of the evaluator)"


class ArchiveError(ValueError):
    """A prediction archive or member that cannot be read; the message names both."""


@dataclass(frozen=True)
class UnexpectedMembers:
    """Members of a prediction that its layout does not ask for (other folders, extra frames,
    other files): never read nor scored, reported with the scores.

    Attributes:
        count: how many.
        names: the first :data:`SHOWN_UNEXPECTED` of them, sorted.
    """

    count: int
    names: tuple[str, ...]

    def to_json(self) -> dict:
        return {"count": self.count, "names": list(self.names)}

    def describe(self) -> str:
        """``"N member(s) ...: a, b and K more"``."""
        more = self.count - len(self.names)
        listed = ", ".join(self.names) + (f" and {more} more" if more > 0 else "")
        return f"{self.count} member(s) the layout does not expect, not scored: {listed}"


NO_UNEXPECTED = UnexpectedMembers(0, ())


# ----------------------------------------------------------------------------- members


@dataclass(frozen=True)
class ZipMember:
    """One member of a zip by its directory entry: plain data that any process reads on its own.

    Attributes:
        archive: the zip file.
        name: the member's name (as the directory spells it).
        raw_name: the name's bytes, which the local header must repeat.
        header_offset: where its local header starts.
        data_end: where its data must end (the next member's header, or the directory).
        compress_type: stored or deflate (checked with the directory).
        compress_size: its compressed size.
        file_size: its uncompressed size (within the limits: checked with the directory).
        crc: its CRC-32.
    """

    archive: str
    name: str
    raw_name: bytes
    header_offset: int
    data_end: int
    compress_type: int
    compress_size: int
    file_size: int
    crc: int

    @property
    def where(self) -> str:
        return f"{self.archive}: member {shown(self.name)}"

    def read(self, max_bytes: int) -> bytes:
        """The member's bytes, inflated as a stream that never makes more than
        ``min(file_size, max_bytes) + 1`` bytes.

        Raises:
            ArchiveError: a local header that disagrees with the directory, data cut short or
                overlapping another member's, a damaged deflate stream, more bytes than declared,
                or a CRC that does not match; the message names the archive and the member.
        """
        try:
            with open(self.archive, "rb") as fp:
                fp.seek(self.header_offset)
                start = self._data_start(fp)
                if start + self.compress_size > self.data_end:
                    raise ArchiveError(f"{self.where} overlaps another member: {DAMAGED}")
                budget = min(self.file_size, max_bytes) + 1
                if self.compress_type == zipfile.ZIP_STORED:
                    data = fp.read(min(self.compress_size, budget))
                else:
                    data = _inflate(fp, self.compress_size, budget)
        except zlib.error as err:
            raise ArchiveError(f"{self.where} is damaged ({err}): {DAMAGED}") from None
        except OSError as err:
            raise ArchiveError(f"{self.where} cannot be read ({err})") from None
        if len(data) != self.file_size or zlib.crc32(data) != self.crc:
            raise ArchiveError(f"{self.where} fails its CRC check: {DAMAGED}")
        return data

    def _data_start(self, fp: io.BufferedReader) -> int:
        """Check the local header at ``fp``'s position; returns where the data starts."""
        header = fp.read(LOCAL_HEADER.size)
        if len(header) != LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
            raise ArchiveError(
                f"{self.where} has no local header where the directory says: {DAMAGED}"
            )
        name_length, extra_length = LOCAL_HEADER.unpack(header)[-2:]
        if fp.read(name_length) != self.raw_name:
            raise ArchiveError(f"{self.where}: its local header names another file: {DAMAGED}")
        return self.header_offset + LOCAL_HEADER.size + name_length + extra_length


def _inflate(fp: io.BufferedReader, compress_size: int, budget: int) -> bytes:
    """Inflate ``compress_size`` bytes of raw deflate from ``fp``, keeping at most ``budget``
    bytes (a longer result is refused by the caller).

    Once ``budget`` is reached, the rest of the chunk read last is inflated and dropped, a step
    of :data:`READ_CHUNK` bytes at a time, so that a stream damaged there is reported as
    damaged rather than as too long (the time this takes is bounded by the chunk).
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    left = compress_size
    while left > 0 and len(out) < budget and not inflater.eof:
        chunk = fp.read(min(READ_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        out += inflater.decompress(chunk, budget - len(out))
    while inflater.unconsumed_tail and not inflater.eof:
        inflater.decompress(inflater.unconsumed_tail, READ_CHUNK)
    return bytes(out)


@dataclass(frozen=True)
class FolderFile:
    """One file of a prediction folder."""

    path: str

    @property
    def where(self) -> str:
        return self.path

    def read(self, max_bytes: int) -> bytes:
        """The file's bytes (at most ``max_bytes``).

        Raises:
            ArchiveError: a file that cannot be read, or a larger one (naming it and the limit).
        """
        try:
            with open(self.path, "rb") as file:
                data = file.read(max_bytes + 1)
        except OSError as err:
            raise ArchiveError(f"{self.path} cannot be read ({err.strerror or err})") from None
        if len(data) > max_bytes:
            raise ArchiveError(
                f"{self.path} is larger than {SECTION}.max_member_mib={max_bytes // MIB} MiB; "
                f"{RAISE_LIMIT}"
            )
        return data


Member = ZipMember | FolderFile


def shown(name: str) -> str:
    """A member name for a one-line message: as it is, or quoted with escapes when it holds
    characters that do not print (a line break would split the message)."""
    return name if name.isprintable() else ascii(name)


# ----------------------------------------------------------------------------- the directory


@dataclass(frozen=True)
class _EndRecord:
    """What a zip's end record says of its directory."""

    entries: int
    size: int
    start: int  # where the directory starts in the file


def _read_end_record(fp: io.BufferedReader, file_size: int) -> _EndRecord | None:
    """The end of central directory record (and its ZIP64 form); ``None`` if there is none."""
    tail_size = min(file_size, END_RECORD.size + MAX_COMMENT)
    fp.seek(file_size - tail_size)
    tail = fp.read(tail_size)
    at = tail.rfind(END_SIGNATURE)
    if at < 0 or at + END_RECORD.size > len(tail):
        return None
    *_, entries, size, _, _ = END_RECORD.unpack_from(tail, at)
    record_at = file_size - tail_size + at
    locator_at = record_at - ZIP64_LOCATOR.size
    if locator_at >= 0:
        fp.seek(locator_at)
        locator = fp.read(ZIP64_LOCATOR.size)
        zip64_at = locator_at - ZIP64_END_RECORD.size
        if locator[:4] == ZIP64_LOCATOR_SIGNATURE and zip64_at >= 0:
            fp.seek(zip64_at)
            record = fp.read(ZIP64_END_RECORD.size)
            if record[:4] != ZIP64_END_SIGNATURE:
                return None
            *_, entries, size, _ = ZIP64_END_RECORD.unpack(record)
            record_at = zip64_at
    return _EndRecord(entries=entries, size=size, start=record_at - size)


def _open_zip(path: Path, limits: ArchiveLimits) -> tuple[zipfile.ZipFile, int]:
    """Open a zip whose end record is within the limits; returns it and where its directory
    starts.

    Raises:
        ArchiveError: no end record, too many members, too large a directory, or a directory
            that does not parse.
    """
    try:
        with open(path, "rb") as fp:
            end = _read_end_record(fp, os.fstat(fp.fileno()).st_size)
    except OSError as err:
        raise ArchiveError(f"prediction {path} cannot be read ({err})") from None
    if end is None:
        raise ArchiveError(
            f"prediction {path} is a damaged zip file (it has no end of central directory "
            "record: cut short?); write or download it again"
        )
    if end.entries > limits.max_members:
        raise ArchiveError(
            f"prediction {path} holds {end.entries} members, over "
            f"{SECTION}.max_members={limits.max_members}; {RAISE_LIMIT}"
        )
    if end.size > limits.directory_bytes:
        raise ArchiveError(
            f"prediction {path} has a {end.size / MIB:.1f} MiB directory, over "
            f"{SECTION}.max_directory_mib={limits.max_directory_mib}; {RAISE_LIMIT}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
        raise ArchiveError(
            f"prediction {path} is a damaged zip file ({err}); write or download it again"
        ) from None
    if len(archive.infolist()) != end.entries:  # the directory holds more than its end record says
        archive.close()
        raise ArchiveError(
            f"prediction {path} is a damaged zip file (its directory lists "
            f"{len(archive.infolist())} members, its end record {end.entries})"
        )
    return archive, end.start


# A name is a plain relative path: no absolute path, drive, backslash, "." or ".." component, or
# empty component (a directory entry ends with "/").
_DRIVE = re.compile(r"^[A-Za-z]:")


def name_problem(name: str) -> str | None:
    """Why a member name is not a plain relative path in the archive, or ``None``."""
    if not name.isprintable():
        return "has a character that does not print in its name"
    if "\\" in name:
        return "uses backslashes; zip the masks again with '/' between folders"
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path; the masks belong at the archive's top level"
    parts = name.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "is not a plain relative path (an empty, '.' or '..' folder)"
    return None


def check_directory(archive: zipfile.ZipFile, path: Path, limits: ArchiveLimits) -> None:
    """Check every entry of a zip's directory, before any member is inflated.

    Raises:
        ArchiveError: naming the archive and the first member that has a name outside the
            layout's rules (:func:`name_problem`) or a name seen before, is encrypted, uses a
            compression method other than stored or deflate, or is over a size or ratio limit;
            or naming the archive when the members' total is over its limit.
    """
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        where = f"{path}: member {shown(info.orig_filename)}"
        problem = name_problem(info.orig_filename)
        if problem is not None:
            raise ArchiveError(f"{where} {problem}")
        if info.filename in seen:
            raise ArchiveError(
                f"{where} appears twice: which one to score is ambiguous; zip the masks again"
            )
        seen.add(info.filename)
        if info.flag_bits & ENCRYPTED_FLAG:
            raise ArchiveError(f"{where} is encrypted; zip the masks again without a password")
        if info.compress_type not in READABLE_METHODS:
            raise ArchiveError(
                f"{where} is compressed with method {info.compress_type}, which cannot be read "
                "here; zip the masks again stored or with deflate"
            )
        if info.file_size > limits.member_bytes:
            raise ArchiveError(
                f"{where} inflates to {info.file_size / MIB:.1f} MiB, over "
                f"{SECTION}.max_member_mib={limits.max_member_mib} (a mask PNG is a few KB); "
                f"{RAISE_LIMIT}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                f"{where} inflates {ratio:.0f} times its compressed size, over "
                f"{SECTION}.max_ratio={limits.max_ratio:g}; {RAISE_LIMIT}"
            )
        total += info.file_size
    if total > limits.total_bytes:
        raise ArchiveError(
            f"prediction {path} inflates to {total / MIB:.1f} MiB in all, over "
            f"{SECTION}.max_total_mib={limits.max_total_mib}; {RAISE_LIMIT}"
        )


def _zip_members(archive: zipfile.ZipFile, path: Path, directory_start: int) -> list[ZipMember]:
    """The file members (directory entries left out), each with where its data must end."""
    infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    ends = [info.header_offset for info in infos[1:]] + [directory_start]
    return [
        ZipMember(
            archive=str(path),
            name=info.filename,
            raw_name=info.orig_filename.encode("utf-8" if info.flag_bits & UTF8_FLAG else "cp437"),
            header_offset=info.header_offset,
            data_end=end,
            compress_type=info.compress_type,
            compress_size=info.compress_size,
            file_size=info.file_size,
            crc=info.CRC,
        )
        for info, end in zip(infos, ends, strict=True)
        if not info.is_dir()
    ]


# ----------------------------------------------------------------------------- the archive


class PredictionArchive:
    """Read access to ``<video_id>/<exp_id>/<frame_name>.png`` in a zip file or a folder.

    Any three-level member layout reads the same way: Ref-DAVIS17's
    ``anno_<k>/<video_id>/<frame_name>.png`` is ``(anno_<k>, video_id, file)`` here.
    :meth:`step_into_wrapper` handles the common mistake of an archive whose masks sit in one
    wrapper folder (``Annotations/<video_id>/...``) instead of at the top level. A zip is checked
    whole when it is opened (the module docstring); :meth:`member` hands out the members the
    metric asks for, and :meth:`unexpected` counts the others.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ArchiveError: a zip that is damaged or over ``limits`` (one line naming it, and the
            member when one is at fault).
        ArchiveError: neither a folder nor a zip file.
    """

    def __init__(self, path: str | Path, limits: ArchiveLimits) -> None:
        self.path = Path(path)
        self.root = self.path  # the folder or zip given (self.path may step into a wrapper)
        self.prefix = ""  # the wrapper folder stepped into, with a trailing "/"
        self.limits = limits
        self._members: dict[str, ZipMember] = {}
        self._directories: list[str] = []  # a zip's directory entries ("<video>/<exp>/")
        self._index: dict[tuple[str, str], set[str]] = {}
        self._zip_videos: set[str] = set()
        self._claimed: set[str] = set()  # member names (zip) or paths (folder) handed out
        self._is_zip = False
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise FileNotFoundError(f"prediction {self.path} not found")
        if not (zipfile.is_zipfile(self.path) or _starts_like_zip(self.path)):
            raise ArchiveError(f"prediction {self.path} is neither a folder nor a zip file")
        self._is_zip = True
        archive, directory_start = _open_zip(self.path, limits)
        with archive:
            check_directory(archive, self.path, limits)
            members = _zip_members(archive, self.path, directory_start)
            self._directories = [info.filename for info in archive.infolist() if info.is_dir()]
        self._members = {member.name: member for member in members}
        self._build_index()

    def _build_index(self) -> None:
        """Index the zip's ``video/``, ``video/exp/`` and ``video/exp/file`` entries (under the
        prefix), directory entries included."""
        self._index.clear()
        self._zip_videos.clear()
        for name in self._all_names():
            if name.startswith(self.prefix):
                self._add_to_index(name[len(self.prefix) :].split("/"))

    def _all_names(self) -> Iterator[str]:
        yield from self._members
        # Folders that hold no file still count as present (an expression with no frame).
        yield from self._directories

    def _add_to_index(self, parts: list[str]) -> None:
        if len(parts) < 2 or not parts[0]:
            return
        self._zip_videos.add(parts[0])
        if len(parts) < 3 or not parts[1]:
            return
        files = self._index.setdefault((parts[0], parts[1]), set())
        if len(parts) == 3 and parts[2]:
            files.add(parts[2])

    def top_level(self) -> set[str]:
        """The folder names at the top level (under the prefix)."""
        if self._is_zip:
            return set(self._zip_videos)
        return {entry.name for entry in os.scandir(self.path) if entry.is_dir()}

    def step_into_wrapper(self, video_ids: Sequence[str]) -> str | None:
        """When no video of ``video_ids`` is at the top level but one single folder holds some,
        read from inside that folder; returns its name (``None``: nothing changed)."""
        top = self.top_level()
        if top & set(video_ids) or len(top) != 1:
            return None
        (wrapper,) = top
        self.step_into(wrapper)
        if not self.top_level() & set(video_ids):
            return None
        return wrapper

    def step_into(self, folder: str) -> None:
        """Read from inside the top-level ``folder`` from now on (a wrapper such as
        ``Annotations``: its members are then ``<video_id>/<exp_id>/<frame_name>.png``)."""
        if self._is_zip:
            self.prefix = f"{self.prefix}{folder}/"
            self._build_index()
        else:
            self.path = self.path / folder

    def folders(self, video_id: str) -> set[str]:
        """The folder names inside a top-level folder (MeViS: the expressions of a video)."""
        if self._is_zip:
            return {exp_id for video, exp_id in self._index if video == video_id}
        folder = self.path / video_id
        if not folder.is_dir():
            return set()
        return {entry.name for entry in os.scandir(folder) if entry.is_dir()}

    def close(self) -> None:
        """Nothing stays open: each member is read with its own file handle."""

    def __enter__(self) -> PredictionArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def has_video(self, video_id: str) -> bool:
        if self._is_zip:
            return video_id in self._zip_videos
        return (self.path / video_id).is_dir()

    def file_names(self, video_id: str, exp_id: str) -> set[str] | None:
        """Names of the files of one expression, or None if its folder is missing."""
        if self._is_zip:
            return self._index.get((video_id, exp_id))
        exp_dir = self.path / video_id / exp_id
        if not exp_dir.is_dir():
            return None
        return {entry.name for entry in os.scandir(exp_dir) if entry.is_file()}

    def member(self, video_id: str, exp_id: str, file_name: str) -> Member:
        """The member ``<video_id>/<exp_id>/<file_name>`` (listed by :meth:`file_names`), to read
        in any process; it no longer counts as unexpected."""
        if self._is_zip:
            name = f"{self.prefix}{video_id}/{exp_id}/{file_name}"
            self._claimed.add(name)
            return self._members[name]
        path = str(self.path / video_id / exp_id / file_name)
        self._claimed.add(path)
        return FolderFile(path)

    def where(self, video_id: str, exp_id: str, file_name: str) -> str:
        """How messages name the member ``<video_id>/<exp_id>/<file_name>``."""
        return self.member(video_id, exp_id, file_name).where

    def read(self, video_id: str, exp_id: str, file_name: str) -> bytes:
        """The bytes of a member (at most ``limits.max_member_mib``).

        Raises:
            ArchiveError: a member that cannot be read or is too large; the message names the
                archive and the member.
        """
        return self.member(video_id, exp_id, file_name).read(self.limits.member_bytes)

    def unexpected(self) -> UnexpectedMembers:
        """The files never handed out by :meth:`member` (the whole archive, wrapper or not)."""
        if self._is_zip:
            names = sorted(set(self._members) - self._claimed)
        else:
            names = sorted(
                Path(path).relative_to(self.root).as_posix()
                for path in set(_folder_files(self.root)) - self._claimed
            )
        return UnexpectedMembers(len(names), tuple(shown(n) for n in names[:SHOWN_UNEXPECTED]))


def _starts_like_zip(path: Path) -> bool:
    """Whether a file starts with a zip member's local header (a zip cut short has no end
    record, which :func:`zipfile.is_zipfile` looks for)."""
    with open(path, "rb") as file:
        return file.read(len(LOCAL_SIGNATURE)) == LOCAL_SIGNATURE


def _folder_files(root: Path) -> Iterator[str]:
    """Every entry of ``root`` that is not a folder (links to folders are not followed)."""
    for folder, dirs, files in os.walk(root):
        for name in files:
            yield os.path.join(folder, name)
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                yield os.path.join(folder, name)


# ----------------------------------------------------------------------------- PNG


def png_size(data: bytes, where: str, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` of a PNG from its header, before anything is decoded.

    Raises:
        ArchiveError: naming ``where``: not a PNG, a header that cannot be read, or more than
            ``max_pixels`` pixels.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ArchiveError(f"{where} is not a PNG image (it starts with {data[:8]!r})")
    start = len(PNG_SIGNATURE)
    if len(data) < start + PNG_IHDR.size:
        raise ArchiveError(f"{where} is a damaged PNG (its header cannot be read)")
    _, kind, width, height = PNG_IHDR.unpack_from(data, start)
    if kind != b"IHDR":
        raise ArchiveError(f"{where} is a damaged PNG (its header cannot be read)")
    if width * height > max_pixels:
        raise ArchiveError(
            f"{where} is a {width}x{height} PNG, over {SECTION}.max_pixels={max_pixels} "
            f"(not decoded); {RAISE_LIMIT}"
        )
    return height, width


def check_png(data: bytes, where: str) -> None:
    """Refuse bytes that are not a PNG, or a PNG cut short or failing a chunk's CRC, before a
    decoder sees them (OpenCV and libpng would print their own messages for each).

    Raises:
        ArchiveError: naming ``where``.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ArchiveError(f"{where} is not a PNG image (it starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # every chunk present and matching its CRC (nothing decoded)
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ArchiveError(f"{where} is a damaged PNG ({_png_error(err)})") from None


def _png_error(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "its header cannot be read"
    return str(err) or type(err).__name__


def decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode a prediction PNG to ``[H, W] bool`` (grayscale value nonzero = foreground).

    Mode ``L`` PNGs (what archives hold) are decoded by Pillow, whose errors are exceptions;
    others by OpenCV's grayscale decoder, as the official MeViS script reads them (its
    conversion of colour or 16-bit PNGs decides what is nonzero), once Pillow has decoded them
    whole. Bound the size first (:func:`png_size`).

    Raises:
        ArchiveError: ``data`` is not a PNG, or a PNG that does not decode; the message starts
            with ``where``.
    """
    check_png(data, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "L":
                return np.asarray(image) != 0
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ArchiveError(f"{where} is a PNG that does not decode ({_png_error(err)})") from None
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        raise ArchiveError(f"{where} is a PNG that does not decode")
    return decoded != 0


def read_prediction_png(
    member: Member, limits: ArchiveLimits, size: tuple[int, int] | None, frame: str
) -> bytes:
    """A prediction PNG's bytes, its size checked from its header before it is decoded.

    Args:
        member: the PNG.
        limits: its bytes and pixels are bounded by these.
        size: ``(H, W)`` it must have (the ground truth's); ``None``: any within the limits.
        frame: the frame it predicts, for messages (``"<video>/<exp>, frame 2"``).
    Raises:
        ArchiveError: the member cannot be read.
        ArchiveError: not a PNG, too many pixels, or a size other than ``size`` (naming
            ``frame`` and the member).
    """
    data = member.read(limits.member_bytes)
    height, width = png_size(data, member.where, limits.max_pixels)
    if size is not None and (height, width) != tuple(size):
        raise ArchiveError(
            f"{frame}: prediction is {width}x{height}, ground truth is {size[1]}x{size[0]} "
            f"({member.where}; not decoded)"
        )
    return data
