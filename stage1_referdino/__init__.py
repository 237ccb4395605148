"""Stage 1 of ReferDINO-Plus: ReferDINO proposals (per frame query scores, boxes, mask logits)."""

from __future__ import annotations

import importlib
from typing import Any

# Public names and the module that defines each. They are imported on first use, so that
# `import stage1_referdino.options` (what the configuration schema needs) stays light.
_EXPORTS = {
    "ReferDINOConfig": "stage1_referdino.build",
    "build_referdino": "stage1_referdino.build",
    "load_model_config": "stage1_referdino.build",
    "load_referdino": "stage1_referdino.build",
    "load_state_dict_strict": "stage1_referdino.build",
    "read_checkpoint": "stage1_referdino.build",
    "ClipFeatures": "stage1_referdino.model",
    "ReferDINO": "stage1_referdino.model",
    "VideoFeatures": "stage1_referdino.model",
    "preprocess": "stage1_referdino.transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
