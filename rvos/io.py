"""File-system helpers: atomic writes, folders with the usual modes, safe path joins, and
write faults (a full disk, a read-only folder) reported with the path they hit."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

# The longest id used as a file or folder name, in UTF-8 bytes: file systems take 255, and the
# names made from an id add a suffix (``.png``, ``.npz``) and, while written, a temporary part
# (``.<name>.<random>.tmp``).
MAX_NAME_BYTES = 200
# Modes a plain open() and mkdir() ask for; the process umask then removes bits (usually 022).
FILE_MODE, DIR_MODE = 0o666, 0o777
# Errors that only a write raises (a full disk or quota, a read-only file system, a file too
# large for it): whatever wrote, nothing more can be saved there.
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
# What to do about a write fault, by errno.
_WRITE_ADVICE = {
    errno.ENOSPC: "free some space on that file system or write elsewhere",
    errno.EDQUOT: "free some of your quota on that file system or write elsewhere",
    errno.EFBIG: "write to a file system that takes larger files",
    errno.EROFS: "the file system is mounted read-only: remount it writable or write elsewhere",
    errno.EACCES: "make the folder writable for this user or write elsewhere",
    errno.EPERM: "make the folder writable for this user or write elsewhere",
}


class WriteError(OSError):
    """A file that could not be written; the message is one line naming the file (not a
    temporary name), the error and what to do. Like the other write faults
    (:func:`is_write_fault`), it stops a run at once: every later write would fail the same way.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(path: Path, err: OSError) -> WriteError:
    """The :class:`WriteError` of ``err``, raised while writing ``path``."""
    reason = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno or 0, "")
    advice = _WRITE_ADVICE.get(err.errno or 0, "check that folder or write elsewhere")
    text = (
        f"cannot write {path}: {reason}{f' ({code})' if code else ''}; {advice}, then rerun "
        "the same command (finished work is kept)"
    )
    return WriteError(err.errno, text)


def is_write_fault(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a failed write, which stops a run: a
    :class:`WriteError`, or an error only writes raise (:data:`WRITE_ONLY_ERRNOS`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, WriteError) or (
            isinstance(seen, OSError) and seen.errno in WRITE_ONLY_ERRNOS
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_fault_message(err: BaseException) -> str:
    """One line for a write fault: a :class:`WriteError`'s own, or the error naming its file."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, WriteError):
            return str(seen)
        if isinstance(seen, OSError) and seen.errno in WRITE_ONLY_ERRNOS and seen.filename:
            return str(write_error(Path(seen.filename), seen))
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(err).split()) or type(err).__name__


@functools.cache
def current_umask() -> int:
    """The process umask (read once: reading it means setting it, briefly)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file or folder under the umask."""
    return (DIR_MODE if directory else FILE_MODE) & ~current_umask()


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` with the usual mode (``tempfile.mkdtemp``
    makes it private, 0700, whatever the umask)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(usual_mode(directory=True))
    return folder


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and carries a
    ``.tmp`` suffix; an exception removes it, so a crash never leaves a file under the final name.
    The file gets the mode a plain ``open()`` would give it (``mkstemp`` makes it private), so
    collaborators on shared storage can read the outputs as the umask allows.

    Raises:
        WriteError: the folder or the temporary file cannot be created, written (a full disk,
            no permission, a read-only file system) or renamed; the message names ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from err
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as err:
            # Writing the temporary file failed; other errors of the body (reading its inputs)
            # are the body's own.
            if err.errno in WRITE_ONLY_ERRNOS or err.filename == str(tmp):
                raise write_error(path, err) from err
            raise
        try:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            tmp.chmod(usual_mode())
            os.replace(tmp, path)
        except OSError as err:
            raise write_error(path, err) from err
    finally:
        with contextlib.suppress(OSError):  # e.g. a folder made read-only meanwhile
            tmp.unlink(missing_ok=True)


def write_json(path: Path, document: object) -> None:
    """``document`` as indented JSON at ``path``, whole or not at all (:func:`atomic_output`;
    the folder is made).

    Raises:
        WriteError: naming ``path``.
    """
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1))


def safe_component(name: str, what: str) -> str:
    """Return ``name`` if it is usable as one path component, else raise ``ValueError``.

    Refuses empty names, ``.``/``..``, path separators and NUL bytes, which could make an id
    escape the folder it is written into; control characters (a line break in a log line or an
    archive listing); names that are not valid Unicode text (a lone surrogate from JSON's
    ``\\ud800``: no file system or zip file can store it); and names longer than
    :data:`MAX_NAME_BYTES` in UTF-8, which no file system would take once a suffix is added.
    """
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name != name.strip()
        or any(unicodedata.category(c) == "Cc" for c in name)
    ):
        raise ValueError(f"{what} {name!r} is not a safe file name")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {name!r} is not a safe file name (not valid Unicode)") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"{what} {name[:20]!r}... is not a safe file name ({size} bytes in UTF-8, at most "
            f"{MAX_NAME_BYTES})"
        )
    return name
