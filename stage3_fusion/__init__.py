"""Stage 3: conditional fusion of stage-1 and SAM 2 masks (and the evaluator command,
``python -m stage3_fusion.evaluate``, over :mod:`rvos.evaluation`)."""

from stage3_fusion.fusion import FusionResult, fuse_expression

__all__ = ["FusionResult", "fuse_expression"]
