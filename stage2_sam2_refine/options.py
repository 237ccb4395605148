"""Typed options of stage 2 (their values and meaning: ``configs/pipeline.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from rvos.options import Autocast, CacheDevice, Choice, OptionError, bounded, check_declared


class PromptKind(Choice):
    """How a kept stage-1 query prompts SAM 2."""

    mask = "mask"  # its mask on its best frame (ReferDINO-Plus)
    box = "box"  # its box on that frame
    point = "point"  # positive clicks sampled from its mask


class Tracker(Choice):
    """The video tracker that propagates the prompted objects (:data:`~stage2_sam2_refine.tracker.TRACKERS`)."""

    sam2 = "sam2"  # SAM 2.1 as released
    samurai = "samurai"  # SAMURAI's motion-aware mask choice and memory, on SAM 2.1 weights
    sam3 = "sam3"  # SAM 3's tracker through transformers (Sam3TrackerVideoModel), its own weights


@dataclass
class TrackerWeights:
    """One tracker's released weights (an entry of ``stage2.released``): what ``stage2.model``
    and ``stage2.checkpoint`` are unless set."""

    model: str
    checkpoint: str


@dataclass
class SamuraiOptions:
    """The ``stage2.samurai`` section: SAMURAI's hyper-parameters (``stage2.tracker=samurai``),
    handed as they are to :class:`~stage2_sam2_refine.samurai.SamuraiVideoPredictor`."""

    SECTION = "stage2.samurai"

    kf_score_weight: float = bounded(0.0, 1.0)
    stable_frames_threshold: int = bounded(0)
    # Thresholds on IoUs (in [0, 1]) and logits: any finite value (below 0, an IoU threshold
    # admits every frame; above 1, none).
    stable_ious_threshold: float = bounded()
    min_obj_score_logits: float = bounded()
    memory_bank_iou_threshold: float = bounded()
    memory_bank_obj_score_threshold: float = bounded()
    memory_bank_kf_score_threshold: float = bounded()

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class Stage2Options:
    """The ``stage2`` section of ``configs/pipeline.yaml``, where each value is explained.

    Attributes:
        model: ``sam2.1_hiera_{t,s,b+,l}`` or a SAM 2 YAML path (``sam2``, ``samurai``);
            ``sam3`` (``sam3``).
        checkpoint: the tracker's weights: a SAM 2 checkpoint file, or SAM 3's transformers
            folder or hub id.
        score_threshold: keep queries whose mean score over the frames above it exceeds it.
        prompt: how a kept query prompts SAM 2.
        num_points: clicks sampled from the mask (``prompt=point``).
        point_seed: seed of the click sampler (each expression restarts from it).
        tracker: the video tracker (SAM 2, SAMURAI or SAM 3).
        autocast: CUDA mixed precision; ``None``: float32. The CPU always runs float32.
        offload_video_to_cpu: decoded frames stay in host memory.
        offload_state_to_cpu: tracking memories stay in host memory.
        retry_offloaded_on_oom: redo a video that runs out of GPU memory with everything offloaded.
        feature_cache_device: where shared per-frame image features wait.
        feature_cache_frames: most frames whose image features a video keeps (least recently
            used dropped first, computed again when needed); ``None``: every frame's.
        samurai: SAMURAI's hyper-parameters.
        released: each tracker's released weights, the defaults of ``model`` and ``checkpoint``.
    """

    SECTION = "stage2"

    model: str
    checkpoint: str
    score_threshold: float = bounded(0.0, 1.0)
    prompt: PromptKind
    num_points: int = bounded(1)
    point_seed: int = bounded(0)  # numpy's generators take non-negative seeds
    tracker: Tracker
    autocast: Autocast | None
    offload_video_to_cpu: bool
    offload_state_to_cpu: bool
    retry_offloaded_on_oom: bool
    feature_cache_device: CacheDevice
    feature_cache_frames: int | None = bounded(1)
    samurai: SamuraiOptions
    released: dict[str, TrackerWeights]

    def __post_init__(self) -> None:
        check_declared(self)
        names = {tracker.value for tracker in Tracker}
        if set(self.released) != names:
            raise OptionError(
                f"{self.SECTION}.released: expected one entry per tracker ({', '.join(sorted(names))}), "
                f"got {', '.join(sorted(self.released)) or 'none'}"
            )
