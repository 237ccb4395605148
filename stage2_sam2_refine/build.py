"""Build the SAM 2 video predictor: resolve the config, instantiate, load the checkpoint.

ReferDINO-Plus builds its predictor with ``build_sam2_video_predictor(model_cfg, ckpt,
device=...)``. That composes SAM 2's YAML through hydra with the predictor class as ``_target_``
and, by default (``apply_postprocessing=True``), five more options; see
:data:`VIDEO_POSTPROCESSING`. :func:`build_sam2_predictor` applies the same options to the same
YAML, but reads it with OmegaConf so that a YAML anywhere on disk works (importing ``sam2``
points hydra's global config search at the ``sam2`` package only).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rvos.checkpoints import load_weights
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor

logger = logging.getLogger(__name__)

# What sam2 warns, with a paragraph of advice, at each place that fills mask holes when its CUDA
# extension (sam2._C) is absent; replaced by one line when the predictor is built.
NO_EXTENSION_WARNING = r"cannot import name '_C' from 'sam2'"

# Released SAM 2.1 models: name -> config inside the installed `sam2` package.
SAM2_MODEL_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# Options `sam2.build_sam.build_sam2_video_predictor` adds with apply_postprocessing=True
# (its default, which ReferDINO-Plus uses), as `model.<key>` overrides.
VIDEO_POSTPROCESSING: dict[str, Any] = {
    # fall back to multimask output when the single mask is not stable
    "sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    # encode clicked frames' masks binarised, as the user sees them
    "binarize_mask_from_pts_for_mem_enc": True,
    # fill background holes up to 8 low-res pixels (needs sam2's CUDA extension; skipped without)
    "fill_hole_area": 8,
}

CHECKPOINT_HINT = "run download_ckpts.sh to fetch the SAM 2.1 checkpoints into checkpoints/"


def resolve_sam2_config(model: str | os.PathLike) -> Path:
    """The YAML of ``model``: a name in :data:`SAM2_MODEL_CONFIGS` or a path to a SAM 2 YAML.

    Raises:
        FileNotFoundError: neither a known name nor an existing file.
    """
    name = os.fspath(model)
    if name in SAM2_MODEL_CONFIGS:
        path = Path(str(resources.files("sam2") / SAM2_MODEL_CONFIGS[name]))
        if not path.is_file():
            raise FileNotFoundError(f"SAM 2 config {path} is missing from the sam2 package")
        return path
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"unknown SAM 2 model {name!r}: expected one of {sorted(SAM2_MODEL_CONFIGS)} "
        "or the path of a SAM 2 YAML"
    )


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as hydra's ``_target_`` wants it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def compose_sam2_config(
    model: str | os.PathLike,
    *,
    predictor_cls: type[SharedFeatureVideoPredictor] = SharedFeatureVideoPredictor,
    apply_postprocessing: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> DictConfig:
    """The resolved config ``build_sam2_video_predictor`` would compose, for ``predictor_cls``.

    Args:
        model: see :func:`resolve_sam2_config`.
        predictor_cls: the class to instantiate (``model._target_``).
        apply_postprocessing: add :data:`VIDEO_POSTPROCESSING`, as SAM 2 does by default.
        overrides: further ``model.<dotted key>: value`` settings (e.g. a tracker's options),
            applied last.
    Returns:
        the config; ``cfg.model`` is instantiable.
    """
    path = resolve_sam2_config(model)
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise ValueError(f"{path}: not a SAM 2 config (no top-level 'model')")
    settings: dict[str, Any] = {"_target_": class_path(predictor_cls)}
    if apply_postprocessing:
        settings.update(VIDEO_POSTPROCESSING)
    settings.update(overrides or {})
    for key, value in settings.items():
        OmegaConf.update(cfg, f"model.{key}", value, merge=True, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def load_sam2_checkpoint(
    model: torch.nn.Module,
    checkpoint: str | os.PathLike,
    *,
    ignore_keys: Sequence[str] = (),
) -> None:
    """Load a SAM 2 checkpoint (``{"model": state_dict}``) strictly, without unpickling code.

    Args:
        model: the freshly built predictor.
        checkpoint: path of the ``.pt`` file.
        ignore_keys: state-dict keys allowed to be missing from or unexpected in the checkpoint.
    Raises:
        FileNotFoundError: no such file (the message says how to download the checkpoints).
        ValueError: the file is not a SAM 2 checkpoint.
        RuntimeError: keys that are missing or unexpected (beyond ``ignore_keys``), or shapes
            that do not match.
    """
    path = Path(checkpoint).expanduser()
    payload = load_weights(path, what="SAM 2 checkpoint", hint=CHECKPOINT_HINT)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("model"), Mapping):
        raise ValueError(f"{path}: not a SAM 2 checkpoint (expected a dict with a 'model' dict)")
    state_dict = dict(payload["model"])
    ignored = set(ignore_keys)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict) - ignored)
    unexpected = sorted(set(state_dict) - expected - ignored)
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not match the SAM 2 model: "
            f"{len(missing)} missing key(s) {missing[:10]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:10]}"
        )
    state_dict = {k: v for k, v in state_dict.items() if k in expected}
    model.load_state_dict(state_dict, strict=not ignored)
    logger.info("loaded SAM 2 checkpoint %s", path)


def build_sam2_predictor(
    model: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    predictor_cls: type[SharedFeatureVideoPredictor] = SharedFeatureVideoPredictor,
    apply_postprocessing: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> SharedFeatureVideoPredictor:
    """Build a SAM 2 video predictor as ReferDINO-Plus does, in eval mode on ``device``.

    Args:
        model: ``sam2.1_hiera_{t,s,b+,l}`` or a SAM 2 YAML path.
        checkpoint: ``{"model": state_dict}`` file, loaded strictly with ``weights_only=True``.
        device: where the model runs.
        predictor_cls: :class:`SharedFeatureVideoPredictor` or a subclass of it.
        apply_postprocessing: SAM 2's default video options (:data:`VIDEO_POSTPROCESSING`).
        overrides: extra ``model.<key>`` settings, e.g. a tracker's hyper-parameters.
    Raises:
        FileNotFoundError: unknown model, or a missing checkpoint (naming ``download_ckpts.sh``).
    """
    if not issubclass(predictor_cls, SharedFeatureVideoPredictor):
        raise TypeError(f"{predictor_cls} is not a SharedFeatureVideoPredictor")
    checkpoint_path = Path(checkpoint).expanduser()
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint {checkpoint_path} not found; {CHECKPOINT_HINT}")
    cfg = compose_sam2_config(
        model,
        predictor_cls=predictor_cls,
        apply_postprocessing=apply_postprocessing,
        overrides=overrides,
    )
    predictor = instantiate(cfg.model, _recursive_=True)
    load_sam2_checkpoint(predictor, checkpoint_path)
    predictor = predictor.to(device)
    predictor.eval()
    explain_missing_extension(predictor.fill_hole_area, torch.device(device))
    return predictor


def explain_missing_extension(fill_hole_area: int, device: torch.device) -> bool:
    """Say in one line that sam2 skips filling mask holes, when it does, and silence sam2's own
    multi-line warning about it (repeated per call site and worker).

    sam2 fills holes of up to ``fill_hole_area`` pixels only with its optional CUDA extension;
    without it the masks are SAM 2's raw ones (as in the CPU reference fixtures). On a GPU this
    differs from the published ReferDINO-Plus setting, so it is a warning there.

    Returns:
        whether the step is skipped.
    """
    if fill_hole_area <= 0 or importlib.util.find_spec("sam2._C") is not None:
        return False
    warnings.filterwarnings("ignore", message=NO_EXTENSION_WARNING, category=UserWarning)
    level = logging.WARNING if device.type == "cuda" else logging.INFO
    logger.log(
        level,
        "sam2 is installed without its CUDA extension: SAM 2's filling of mask holes up to %d px "
        "is skipped%s",
        fill_hole_area,
        " (the published results used it: reinstall with `make setup SAM2_BUILD_CUDA=1`)"
        if device.type == "cuda"
        else " (as in the CPU reference fixtures)",
    )
    return True
