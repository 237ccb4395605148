"""File-system helpers: atomic writes and safe path joins."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and carries a
    ``.tmp`` suffix; an exception removes it, so a crash never leaves a file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
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
