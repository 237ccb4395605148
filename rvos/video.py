"""Video I/O: reading a clip (a video file or a folder of frames) and writing H.264 mp4s.

- :func:`load_clip`: a video file (anything PyAV decodes; display rotation applied) or a folder of
  ``.jpg``/``.jpeg``/``.png`` frames in natural name order, optionally subsampled. A clip is
  never held decoded whole: its frames are files read when indexed (:class:`~rvos.frames.FrameFiles`),
  a folder's own files or, for a video, each frame decoded once into a temporary folder of
  lossless PNGs (the same pixels as decoding it in memory);
- :func:`clip_duration`: how long a clip lasts, without decoding it;
- :func:`h264_writer`: an H.264 ``yuv420p`` mp4, written atomically.

Problems a user can fix raise :class:`VideoError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rvos.frames import FrameFiles, decoded_size
from rvos.io import atomic_output
from rvos.progress import progress_bar

logger = logging.getLogger(__name__)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# zlib level of a decoded video's PNG frames: lossless at any level; 1 writes fastest.
SCRATCH_PNG_LEVEL = 1
# Encoders tried in order for H.264 (libx264 ships with PyAV's wheels).
H264_ENCODERS = ("libx264", "h264")


class VideoError(ValueError):
    """A video or frame folder that cannot be used; the message is one line naming it."""


@dataclass
class Clip:
    """The frames the demo segments (use as a context manager, or :meth:`close` it).

    Attributes:
        source: the video file or frame folder.
        frames: ``T`` RGB images of one size, each decoded from its file when indexed.
        frame_names: ``T`` names of the mask PNGs (without ``.png``).
        fps: frame rate of the overlay video.
        size: ``(H, W)`` of every frame.
        scratch: the temporary folder of a video's decoded frames (deleted by :meth:`close`);
            ``None`` for a frame folder.
    """

    source: Path
    frames: FrameFiles
    frame_names: list[str]
    fps: Fraction
    size: tuple[int, int]
    scratch: Path | None = None
    _cleanup: weakref.finalize | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scratch is not None:  # also deleted when the clip is garbage-collected
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.scratch, True)

    @property
    def name(self) -> str:
        return source_name(self.source)

    def close(self) -> None:
        """Delete the temporary frames of a video (a frame folder is left as it is)."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
        self.scratch = None

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def source_name(path: Path) -> str:
    """A video file's stem or a frame folder's name (``clip.mp4`` -> ``clip``)."""
    path = path.resolve()
    return path.stem if path.is_file() else path.name


def natural_key(name: str) -> list[Any]:
    """Sort key ordering embedded numbers by value: ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


FrameCallback = Callable[[int, int | None], None]


def load_clip(
    path: Path,
    *,
    frame_step: int,
    max_frames: int | None,
    folder_fps: float,
    on_frame: FrameCallback | None = None,
) -> Clip:
    """Read a video file or a frame folder, keeping every ``frame_step``-th frame.

    Args:
        on_frame: called after each frame decoded (a video) or checked (a folder) with
            ``(frames done, frames in all)`` (``None`` when a video does not say).
    Raises:
        VideoError: missing path, unreadable or corrupt input, no frames, frames of mixed sizes.
    """
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_frame_folder(
            path, frame_step=frame_step, max_frames=max_frames, fps=folder_fps, on_frame=on_frame
        )
    return decode_video(
        path,
        frame_step=frame_step,
        max_frames=max_frames,
        fallback_fps=folder_fps,
        on_frame=on_frame,
    )


def frame_files(folder: Path) -> list[Path]:
    """The ``.jpg``/``.jpeg``/``.png`` images of ``folder`` in natural name order."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )


def clip_duration(path: Path, *, folder_fps: float) -> float | None:
    """Seconds a video file or frame folder lasts (a folder: its frames at ``folder_fps``),
    read from the container without decoding; ``None`` when the file does not say.

    Raises:
        VideoError: missing path, or a file that cannot be opened as a video.
    """
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return len(frame_files(path)) / folder_fps
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: not a readable video ({_ffmpeg_reason(err)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        rate = stream.average_rate or stream.guessed_rate
        if stream.frames and rate:
            return float(stream.frames / rate)
    return None


def read_frame_folder(
    folder: Path,
    *,
    frame_step: int,
    max_frames: int | None,
    fps: float,
    on_frame: FrameCallback | None = None,
) -> Clip:
    """The ``.jpg``/``.jpeg``/``.png`` images of ``folder`` in natural order, subsampled.

    Each kept frame is decoded once here, to check it (a truncated file is found only by
    decoding it) and its size, and is then read again when the clip is indexed.
    """
    files = frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: no {'/'.join(FRAME_SUFFIXES)} frames in this folder")
    files = files[::frame_step][:max_frames]
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise VideoError(f"{folder}: two frames are named {duplicate!r}")
    first_size: tuple[int, int] | None = None
    with ThreadPoolExecutor() as pool:
        checked = progress_bar(
            pool.map(decoded_size, files),
            total=len(files),
            desc="checking frames",
            unit="frame",
            dynamic_ncols=True,
            delay=1,
        )
        for done, (path, (size, reason)) in enumerate(zip(files, checked, strict=True), 1):
            if on_frame is not None:
                on_frame(done, len(files))
            if size is None:
                raise VideoError(f"frame {path} is {reason}")
            if first_size is None:
                first_size = size
            elif size != first_size:
                raise VideoError(
                    f"frame {path.name} is {size[1]}x{size[0]}, "
                    f"{files[0].name} is {first_size[1]}x{first_size[0]}: all frames need one size"
                )
    assert first_size is not None
    return Clip(folder, FrameFiles(files), names, Fraction(fps).limit_denominator(1001), first_size)


def _ffmpeg_reason(err: Exception) -> str:
    """FFmpeg's own words for ``err``, without the errno and path PyAV adds."""
    return str(getattr(err, "strerror", None) or err)


def decode_video(
    path: Path,
    *,
    frame_step: int,
    max_frames: int | None,
    fallback_fps: float,
    on_frame: FrameCallback | None = None,
) -> Clip:
    """Decode ``path`` with PyAV (display rotation applied), keeping every ``frame_step``-th frame.

    Each kept frame is written as a lossless PNG into a new folder in the system's temporary
    folder (``TMPDIR``; the clip's ``scratch``), so that memory does not grow with the clip. Frames are
    named by their index in the video, zero-padded to 5 digits. A video that breaks off after
    some frames (e.g. a truncated file) keeps the frames decoded so far, with a warning.

    Raises:
        VideoError: the file cannot be opened as a video, or no frame decodes.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: not a readable video ({_ffmpeg_reason(err)})") from None
    scratch = Path(tempfile.mkdtemp(prefix="clip-"))
    try:
        with container:
            clip = _decode_into(
                container, path, scratch, frame_step, max_frames, fallback_fps, on_frame
            )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return clip


def _decode_into(
    container: Any,
    path: Path,
    scratch: Path,
    frame_step: int,
    max_frames: int | None,
    fallback_fps: float,
    on_frame: FrameCallback | None,
) -> Clip:
    """:func:`decode_video`'s frames from the open ``container``, written into ``scratch``."""
    import av

    if not container.streams.video:
        raise VideoError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    fps = Fraction(rate) if rate else Fraction(fallback_fps).limit_denominator(1001)
    total = -(-stream.frames // frame_step) if stream.frames else None
    if total is not None and max_frames is not None:
        total = min(total, max_frames)
    files: list[Path] = []
    names: list[str] = []
    size: tuple[int, int] | None = None
    # delay: no bar at all when decoding fails at once.
    with progress_bar(
        total=total, desc="decoding", unit="frame", dynamic_ncols=True, delay=1
    ) as bar:
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % frame_step:
                    continue
                image = frame.to_image()
                if frame.rotation:
                    # The display matrix's counter-clockwise angle, as players apply it.
                    image = image.rotate(frame.rotation, expand=True)
                size = size or (image.height, image.width)
                names.append(f"{index:05d}")
                files.append(scratch / f"{names[-1]}.png")
                image.save(files[-1], compress_level=SCRATCH_PNG_LEVEL)
                bar.update()
                if on_frame is not None:
                    on_frame(len(files), total)
                if max_frames is not None and len(files) >= max_frames:
                    break
        except av.FFmpegError as err:
            if not files:
                raise VideoError(f"{path}: cannot decode it ({_ffmpeg_reason(err)})") from None
            logger.warning(
                "%s: decoding stopped after %d frame(s) (%s); using those",
                path,
                len(files),
                _ffmpeg_reason(err),
            )
    if size is None:
        raise VideoError(f"{path}: no video frame could be decoded")
    return Clip(path, FrameFiles(files), names, fps / frame_step, size, scratch)


def _encoder_name() -> str:
    """The first H.264 encoder of :data:`H264_ENCODERS` this PyAV build has."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        return name
    raise VideoError(f"this PyAV build has no H.264 encoder (tried {', '.join(H264_ENCODERS)})")


@contextlib.contextmanager
def h264_writer(
    path: Path, *, size: tuple[int, int], fps: Fraction, crf: int
) -> Iterator[Callable[[np.ndarray], None]]:
    """Write an H.264 ``yuv420p`` mp4 atomically; yields ``write(picture)``.

    Args:
        size: ``(H, W)`` of the pictures, both even.
        fps: frame rate.
        crf: constant rate factor (0 lossless .. 51 worst).
    Yields:
        a function taking one ``[H, W, 3] uint8`` RGB picture.
    """
    import av

    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(_encoder_name(), rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}

        def write(picture: np.ndarray) -> None:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)

        yield write
        for packet in stream.encode():
            container.mux(packet)
