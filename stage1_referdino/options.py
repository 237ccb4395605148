"""Typed options of stage 1 (their values and meaning: ``configs/pipeline.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from rvos.options import Autocast, CacheDevice, bounded, check_declared


@dataclass
class Stage1Window:
    """The ``stage1.window`` section: long clips in overlapping windows (``stage1_referdino.windows``).

    Attributes:
        frames: frames per window; ``None``: the whole clip in one pass.
        overlap: the share of a window its neighbour shares at least (rounded to frames, at
            least one; at most half a window).
    """

    SECTION = "stage1.window"

    frames: int | None = bounded(2)
    overlap: float = bounded(1e-3, 0.5)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class Stage1Options:
    """The ``stage1`` section of ``configs/pipeline.yaml``, where each value is explained.

    Attributes:
        model: a name in ``configs/referdino/`` or a YAML path.
        checkpoint: the ReferDINO checkpoint.
        text_encoder: tokenizer + BERT config folder; ``None``: the model YAML's.
        short_side: input resize, shorter side.
        top_k: queries kept per expression for stage 2; ``None``: all.
        obj_threshold: mean-score threshold of the stage-1 answer.
        autocast: CUDA mixed precision; ``None``: float32.
        feature_cache_device: where a video's backbone features wait between expressions.
        export_legacy: also write ReferDINO-Plus ``<video>.npz``.
        legacy_dir: ReferDINO-Plus ``*.npz`` to import instead of running the model.
        window: long clips in overlapping windows, or one pass.
    """

    SECTION = "stage1"

    model: str
    checkpoint: str
    text_encoder: str | None
    short_side: int = bounded(1)
    top_k: int | None = bounded(1)
    obj_threshold: float = bounded(0.0, 1.0)
    autocast: Autocast | None
    feature_cache_device: CacheDevice
    export_legacy: bool
    legacy_dir: str | None
    window: Stage1Window

    def __post_init__(self) -> None:
        check_declared(self)
