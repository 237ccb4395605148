"""Lazy exports: a package's public names, each imported from its module on first use.

A stage package lists what it exports; ``import stage2_sam2_refine.options`` (what the
configuration schema needs) then stays light, and the model code loads only when one of its
names is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and the module ``__getattr__`` of ``package``.

    Args:
        package: the package's ``__name__`` (named in the error for an unknown name).
        exports: module -> the public names it defines.
    Returns:
        (every exported name, sorted; a ``__getattr__`` importing a name's module on first use).
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_of[name]), name)

    return sorted(module_of), __getattr__
