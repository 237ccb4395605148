"""File-system helpers: atomic writes, folders with the usual modes, safe path joins."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Modes a plain open() and mkdir() ask for; the process umask then removes bits (usually 022).
FILE_MODE, DIR_MODE = 0o666, 0o777


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
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(usual_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def safe_component(name: str, what: str) -> str:
    """Return ``name`` if it is usable as one path component, else raise ``ValueError``.

    Refuses empty names, ``.``/``..``, path separators and NUL bytes, which could make an id
    escape the folder it is written into.
    """
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name != name.strip()
    ):
        raise ValueError(f"{what} {name!r} is not a safe file name")
    return name
