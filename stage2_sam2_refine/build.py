"""Build the SAM 2 video predictor: resolve the config, instantiate, load the checkpoint.

ReferDINO-Plus builds its predictor with ``build_sam2_video_predictor(model_cfg, ckpt,
device=...)``. :func:`build_sam2_predictor` calls that same public builder of ``sam2``, with
SAM 2's default video options (``apply_postprocessing``), our predictor class as ``_target_`` and
a tracker's settings as hydra overrides, then loads the checkpoint strictly itself. Hydra's
search path is pointed at the ``sam2`` package or at a YAML's folder for the call
(:func:`sam2_hydra`), so that a YAML anywhere on disk works too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from sam2.build_sam import build_sam2_video_predictor

from rvos.checkpoints import load_weights
from rvos.weights import resolve_weights
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

CHECKPOINT_HINT = (
    "run `bash download_ckpts.sh sam2` to fetch the SAM 2.1 checkpoints, or name one by its hub "
    "reference (hf://facebook/sam2.1-hiera-large/sam2.1_hiera_large.pt)"
)


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


def sam2_config_location(model: str | os.PathLike) -> tuple[Path | None, str]:
    """Where hydra finds ``model`` (see :func:`resolve_sam2_config`): (the folder to search, or
    None for the ``sam2`` package; the config name in it)."""
    path = resolve_sam2_config(model)
    name = os.fspath(model)
    if name in SAM2_MODEL_CONFIGS:
        return None, SAM2_MODEL_CONFIGS[name]
    path = path.resolve()
    return path.parent, path.name


@contextlib.contextmanager
def sam2_hydra(config_dir: Path | None) -> Iterator[None]:
    """Hydra searching the ``sam2`` package (or ``config_dir``); the global state is restored."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        if config_dir is None:
            with initialize_config_module("sam2", version_base="1.2"):
                yield
        else:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
                yield
    finally:
        restore_gh_from_backup(backup)


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as hydra's ``_target_`` wants it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def hydra_overrides(settings: Mapping[str, Any], prefix: str = "model") -> list[str]:
    """``++<prefix>.<dotted key>=<value>`` hydra overrides setting ``settings`` (nested mappings
    are flattened; values are bools, numbers, None, or strings without spaces or quotes)."""
    overrides = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            overrides += hydra_overrides(value, f"{prefix}.{key}")
            continue
        if isinstance(value, bool) or value is None:
            text = {True: "true", False: "false", None: "null"}[value]
        elif isinstance(value, int | float):
            text = repr(value)  # the shortest text that parses back to the same number
        else:
            text = str(value)
        overrides.append(f"++{prefix}.{key}={text}")
    return overrides


def instantiate_sam2(
    model: str | os.PathLike,
    *,
    predictor_cls: type[SharedFeatureVideoPredictor] = SharedFeatureVideoPredictor,
    apply_postprocessing: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> SharedFeatureVideoPredictor:
    """``sam2.build_sam.build_sam2_video_predictor`` on the CPU, without weights (the modules'
    own initialisation), for ``predictor_cls``.

    Args:
        model: see :func:`resolve_sam2_config`.
        predictor_cls: the class to instantiate (``model._target_``).
        apply_postprocessing: SAM 2's default video options (dynamic multimask fallback,
            binarised prompt masks, hole filling), as ReferDINO-Plus uses them.
        overrides: further ``model.<dotted key>: value`` settings (e.g. a tracker's options;
            SAM 2's video options are applied after them).
    """
    config_dir, config_name = sam2_config_location(model)
    settings = {"_target_": class_path(predictor_cls), **(overrides or {})}
    with sam2_hydra(config_dir):
        return build_sam2_video_predictor(
            config_name,
            None,
            device="cpu",
            hydra_overrides_extra=hydra_overrides(settings),
            apply_postprocessing=apply_postprocessing,
        )


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
        checkpoint: ``{"model": state_dict}`` file, loaded strictly with ``weights_only=True``,
            or its hub reference (``hf://<owner>/<repo>[@<revision>]/<path>``, resolved by
            :func:`rvos.weights.resolve_weights`).
        device: where the model runs.
        predictor_cls: :class:`SharedFeatureVideoPredictor` or a subclass of it.
        apply_postprocessing: SAM 2's default video options (see :func:`instantiate_sam2`).
        overrides: extra ``model.<key>`` settings, e.g. a tracker's hyper-parameters.
    Raises:
        FileNotFoundError: unknown model, or a missing checkpoint (naming ``download_ckpts.sh``).
        rvos.weights.WeightsError: a hub reference that cannot be resolved (one line).
    """
    if not issubclass(predictor_cls, SharedFeatureVideoPredictor):
        raise TypeError(f"{predictor_cls} is not a SharedFeatureVideoPredictor")
    checkpoint_path = resolve_weights(checkpoint)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint {checkpoint_path} not found; {CHECKPOINT_HINT}")
    predictor = instantiate_sam2(
        model,
        predictor_cls=predictor_cls,
        apply_postprocessing=apply_postprocessing,
        overrides=overrides,
    )
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
