"""Reading model weight files safely, with errors that say what to do.

Both stages load PyTorch files with ``weights_only=True`` (no code runs from a checkpoint). When a
file is not what it should be — truncated download, an HTML error page saved as ``.pt``, a pickle
of something else — PyTorch's own message suggests retrying with ``weights_only=False``, which
would run whatever code the file holds. :func:`load_weights` reports such files in one line
instead, naming the file and the way to get a good copy.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

# torch.save's formats: a zip archive (since PyTorch 1.6), or the legacy pickle stream.
_PICKLE_PROTOCOL_OPCODE = b"\x80"


class CheckpointError(ValueError):
    """A weight file that is missing or unreadable; the message is one line saying what to do."""


def checkpoint_problem(path: str | Path, *, key: str, hint: str) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint, judged from its first bytes (cheap), or
    ``None``.

    Args:
        path: the file.
        key: the configuration key that names it (``stage1.checkpoint``), for the message.
        hint: how to get the file (e.g. "run `bash download_ckpts.sh`").
    """
    path = Path(path).expanduser()
    if not path.is_file():
        return f"{key}={path}: not found; {hint}, or point {key}= at your file"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(1)
    if size == 0 or not (zipfile.is_zipfile(path) or head == _PICKLE_PROTOCOL_OPCODE):
        return f"{key}={path}: not a PyTorch checkpoint ({size} bytes); {hint} to get it again"
    return None


def load_weights(path: str | Path, *, what: str, hint: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Args:
        path: the checkpoint.
        what: what it should be, for messages ("ReferDINO checkpoint").
        hint: how to get a good copy.
        mmap: memory-map the tensors (zip-format files only; others are read normally).
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file cannot be read as PyTorch weights (truncated, not a checkpoint,
            or a pickle of objects other than tensors and plain containers).
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; {hint}")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors (refused: loading it could run code)"
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        reason = f"unreadable: {type(err).__name__}"
    raise CheckpointError(f"{what} {path} is not a usable weight file ({reason}); {hint}")
