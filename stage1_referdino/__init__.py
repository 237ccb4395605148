"""Stage 1 of ReferDINO-Plus: ReferDINO proposals (per frame query scores, boxes, mask logits)."""

from .build import (
    ReferDINOConfig,
    build_referdino,
    load_model_config,
    load_referdino,
    load_state_dict_strict,
    read_checkpoint,
)
from .model import ClipFeatures, ReferDINO, VideoFeatures
from .transforms import preprocess

__all__ = [
    "ClipFeatures",
    "ReferDINO",
    "ReferDINOConfig",
    "VideoFeatures",
    "build_referdino",
    "load_model_config",
    "load_referdino",
    "load_state_dict_strict",
    "preprocess",
    "read_checkpoint",
]
