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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# torch.save's formats: a zip archive (since PyTorch 1.6), or the legacy pickle stream.
_PICKLE_PROTOCOL_OPCODE = b"\x80"


def _state_dict_with(container: str, prefixes: tuple[str, ...]) -> Callable[[Any], bool]:
    """A test of a loaded checkpoint: ``{container: state_dict}`` with keys under every one of
    ``prefixes`` (the top-level modules that make the model what it is)."""

    def test(content: Any) -> bool:
        if not isinstance(content, Mapping) or not isinstance(content.get(container), Mapping):
            return False
        keys = [str(k) for k in content[container]]
        return all(any(k.startswith(p) for k in keys) for p in prefixes)

    return test


# Model family -> how its released checkpoints are laid out, to tell one from another before
# a model is built (a file of another family gets a message naming what it is).
CHECKPOINT_FAMILIES: dict[str, Callable[[Any], bool]] = {
    # ReferDINO: {"model_state_dict": ...} (its Swin backbone, transformer and BERT)
    "ReferDINO": _state_dict_with("model_state_dict", ("backbone.", "transformer.", "bert.")),
    # SAM 2 / SAM 2.1: {"model": ...} (image encoder, memory attention, mask decoder)
    "SAM 2": _state_dict_with(
        "model", ("image_encoder.", "memory_attention.", "sam_mask_decoder.")
    ),
}


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


def checkpoint_family(content: Any) -> str | None:
    """The family (:data:`CHECKPOINT_FAMILIES`) of a loaded checkpoint, or ``None``."""
    return next((name for name, test in CHECKPOINT_FAMILIES.items() if test(content)), None)


def _describe_content(content: Any) -> str:
    if isinstance(content, Mapping):
        keys = sorted(str(k) for k in content)
        return f"a dict with keys {keys[:5]}{' ...' if len(keys) > 5 else ''}"
    return f"a {type(content).__name__}"


def checkpoint_family_problem(path: str | Path, *, key: str, family: str, hint: str) -> str | None:
    """Why ``path`` is not a usable ``family`` checkpoint, or ``None``: missing, not a PyTorch
    file, unreadable, or a checkpoint of another model.

    Cheap for zip-format files (what ``torch.save`` writes): the tensors are memory-mapped, so
    only the file's index of names and shapes is read; a legacy-format file is read in full.

    Args:
        path: the file.
        key: the configuration key that names it (``stage2.checkpoint``), for the message.
        family: a name in :data:`CHECKPOINT_FAMILIES`.
        hint: how to get the file (e.g. "run `bash download_ckpts.sh`").
    """
    problem = checkpoint_problem(path, key=key, hint=hint)
    if problem is not None:
        return problem
    path = Path(path).expanduser()
    try:
        content = load_weights(path, what=f"{family} checkpoint", hint=hint, mmap=True)
    except CheckpointError as err:
        return f"{key}: {err}"
    if CHECKPOINT_FAMILIES[family](content):
        return None
    found = checkpoint_family(content)
    what = f"a {found} checkpoint" if found else _describe_content(content)
    return (
        f"{key}={path}: {what}, not a {family} checkpoint; point {key}= at a {family} "
        f"checkpoint ({hint})"
    )
