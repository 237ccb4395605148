"""ReferDINO network modules (inference), parameter names as in the released checkpoints."""

from .referdino import ClipFeatures, ReferDINO, VideoFeatures

__all__ = ["ClipFeatures", "ReferDINO", "VideoFeatures"]
