"""Reading a prediction archive: the PNG masks of a zip file or a folder, member by member.

An archive holds ``<video_id>/<exp_id>/<frame_name>.png`` at its top level (MeViS); any
three-level layout reads the same way (Ref-DAVIS17: ``anno_<k>/<video_id>/<frame_name>.png``).
A member that cannot be read (a damaged zip, an unsupported compression, a file that is not a
PNG or does not decode) is refused with one line naming the archive and the member, before a
decoder prints its own messages. The writers are in :mod:`rvos.archive`; the metrics that read
archives in :mod:`rvos.mevis_metric` and :mod:`rvos.davis_metric`.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

PNG_SUFFIX = ".png"


class PredictionArchive:
    """Read access to ``<video_id>/<exp_id>/<frame_name>.png`` in a zip file or a folder.

    Any three-level member layout reads the same way: Ref-DAVIS17's
    ``anno_<k>/<video_id>/<frame_name>.png`` is ``(anno_<k>, video_id, file)`` here.
    :meth:`step_into_wrapper` handles the common mistake of an archive whose masks sit in one
    wrapper folder (``Annotations/<video_id>/...``) instead of at the top level.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.prefix = ""  # the wrapper folder stepped into, with a trailing "/"
        self._zip: zipfile.ZipFile | None = None
        self._index: dict[tuple[str, str], set[str]] = {}
        self._zip_videos: set[str] = set()
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise FileNotFoundError(f"prediction {self.path} not found")
        if not zipfile.is_zipfile(self.path):
            raise ValueError(f"prediction {self.path} is neither a folder nor a zip file")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise ArchiveError(
                f"prediction {self.path} is a damaged zip file ({err}); write or download it again"
            ) from None
        self._build_index()

    def _build_index(self) -> None:
        """Index the zip's ``video/``, ``video/exp/`` and ``video/exp/file`` entries (under the
        prefix)."""
        self._index.clear()
        self._zip_videos.clear()
        assert self._zip is not None
        for name in self._zip.namelist():
            if name.startswith(self.prefix):
                self._add_to_index(name[len(self.prefix) :].split("/"))

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
        if self._zip is not None:
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
        if self._zip is not None:
            self.prefix = f"{self.prefix}{folder}/"
            self._build_index()
        else:
            self.path = self.path / folder

    def folders(self, video_id: str) -> set[str]:
        """The folder names inside a top-level folder (MeViS: the expressions of a video)."""
        if self._zip is not None:
            return {exp_id for video, exp_id in self._index if video == video_id}
        folder = self.path / video_id
        if not folder.is_dir():
            return set()
        return {entry.name for entry in os.scandir(folder) if entry.is_dir()}

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> PredictionArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def has_video(self, video_id: str) -> bool:
        if self._zip is not None:
            return video_id in self._zip_videos
        return (self.path / video_id).is_dir()

    def file_names(self, video_id: str, exp_id: str) -> set[str] | None:
        """Names of the files of one expression, or None if its folder is missing."""
        if self._zip is not None:
            return self._index.get((video_id, exp_id))
        exp_dir = self.path / video_id / exp_id
        if not exp_dir.is_dir():
            return None
        return {entry.name for entry in os.scandir(exp_dir)}

    def where(self, video_id: str, exp_id: str, file_name: str) -> str:
        """The file of a member, for messages: ``<zip>: member <name>`` or its path."""
        if self._zip is not None:
            return f"{self.path}: member {self.prefix}{video_id}/{exp_id}/{file_name}"
        return str(self.path / video_id / exp_id / file_name)

    def read(self, video_id: str, exp_id: str, file_name: str) -> bytes:
        """The bytes of a member.

        Raises:
            ArchiveError: a zip member that cannot be read (fails its CRC, truncated, an
                unsupported compression method, encrypted); the message names the archive and
                the member.
        """
        if self._zip is None:
            return (self.path / video_id / exp_id / file_name).read_bytes()
        name = f"{self.prefix}{video_id}/{exp_id}/{file_name}"
        try:
            return self._zip.read(name)
        except NotImplementedError:
            method = self._zip.getinfo(name).compress_type
            reason = (
                f"is compressed with method {method}, which cannot be read here; zip the "
                "masks again stored or with deflate"
            )
        except RuntimeError as err:  # zipfile's words for a member that needs a password
            if "encrypted" not in str(err):
                raise
            reason = "is encrypted; zip the masks again without a password"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            kind = "fails its CRC check" if "CRC" in str(err) else f"is damaged ({err})"
            reason = f"{kind}: the archive is damaged; write or download it again"
        raise ArchiveError(f"{self.where(video_id, exp_id, file_name)} {reason}")


class ArchiveError(ValueError):
    """A prediction archive or member that cannot be read; the message names both."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes, where: str) -> None:
    """Refuse bytes that are not a PNG, or a PNG cut short or failing a chunk's CRC, before a
    decoder sees them (OpenCV and libpng would print their own messages for each).

    Raises:
        ValueError: naming ``where``.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{where} is not a PNG image (it starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # every chunk present and matching its CRC (nothing decoded)
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ValueError(f"{where} is a damaged PNG ({_png_error(err)})") from None


def _png_error(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "its header cannot be read"
    return str(err) or type(err).__name__


def decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode a prediction PNG to ``[H, W] bool`` (grayscale value nonzero = foreground).

    Mode ``L`` PNGs (what archives hold) are decoded by Pillow, whose errors are exceptions;
    others by OpenCV's grayscale decoder, as the official MeViS script reads them (its
    conversion of colour or 16-bit PNGs decides what is nonzero), once Pillow has decoded them
    whole.

    Raises:
        ValueError: ``data`` is not a PNG, or a PNG that does not decode; the message starts
            with ``where``.
    """
    check_png(data, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "L":
                return np.asarray(image) != 0
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ValueError(f"{where} is a PNG that does not decode ({_png_error(err)})") from None
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        raise ValueError(f"{where} is a PNG that does not decode")
    return decoded != 0
