"""Fetch the released weights into the Hugging Face cache, checked: ``bash download_ckpts.sh``.

::

    python -m referdino_plus.weights                      # what the default run needs
    python -m referdino_plus.weights sam2 referdino bert  # groups (all: these three)
    python -m referdino_plus.weights sam3                 # SAM 3's tracker (gated: hf auth login)
    python -m referdino_plus.weights mevis_swinb.pth hf://<owner>/<repo>/<file>  # single files

A target is a group (``referdino`` and ``sam2``: the ``weights`` section of
``configs/pipeline.yaml``; ``bert``: the text encoder of ``stage1.model``; ``sam3``:
``stage2.released.sam3``; ``all``), a released file's name (``mevis_swinb.pth``), or any weight
setting (a hub reference or a path); ``key=value`` arguments override the configuration (e.g. a
group's entry). Without a target: ``stage1.checkpoint``, the text encoder and
``stage2.checkpoint`` of the configuration.

Each file goes through the resolver a run uses (:func:`rvos.weights.resolve_weights`), so it lands
where a run looks (``HF_HOME``, through ``HF_ENDPOINT``, with the user's token) and is accepted
only when its size and SHA-256 match the hub's. A cached file that does not match is fetched
again; if it still does not, it is deleted. A copy in ``checkpoints/`` (where this command put
files before) is what a run uses, so it is checked against the hub instead. Each target's outcome
is printed, then a summary; the exit status is 1 when any target failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from referdino_plus.config import ConfigError, PipelineConfig, load_config
from rvos.weights import (
    ChecksumError,
    HubReference,
    WeightsError,
    file_problem,
    forget_cached,
    hub_metadata,
    is_hub_reference,
    parse_reference,
    released_copy,
    resolve_weights,
)

logger = logging.getLogger("referdino_plus.weights")

GROUPS = ("referdino", "sam2", "bert", "sam3")
ALL = ("referdino", "sam2", "bert")  # `all`: SAM 3 is gated and asked for by name


@dataclass(frozen=True)
class Target:
    """One thing to fetch.

    Attributes:
        name: how the report names it.
        value: a hub reference or a path.
        kind: ``file``, ``text_encoder`` (a BERT folder) or ``sam3`` (SAM 3's folder).
    """

    name: str
    value: str
    kind: str = "file"


def text_encoder_target(cfg: PipelineConfig) -> Target:
    """The text encoder ``stage1`` uses: ``stage1.text_encoder``, else ``stage1.model``'s."""
    from stage1_referdino.build import load_model_config

    value = cfg.stage1.text_encoder or load_model_config(cfg.stage1.model)[0]["text_encoder_type"]
    return Target("bert", str(value), "text_encoder")


def group_targets(group: str, cfg: PipelineConfig) -> list[Target]:
    """The targets of a group name (see the module docstring)."""
    if group == "all":
        return [t for name in ALL for t in group_targets(name, cfg)]
    if group in ("referdino", "sam2"):
        return [Target(released_name(v), v) for v in getattr(cfg.weights, group).values()]
    if group == "bert":
        return [text_encoder_target(cfg)]
    if group == "sam3":
        return [Target("sam3", cfg.stage2.released["sam3"].checkpoint, "sam3")]
    raise KeyError(group)


def released_name(value: str) -> str:
    """A weight setting's file or folder name (``mevis_swinb.pth``)."""
    if is_hub_reference(value):
        return parse_reference(value).released_name
    return Path(value).name


def default_targets(cfg: PipelineConfig) -> list[Target]:
    """What a run of ``cfg`` loads: ``stage1.checkpoint``, the text encoder, ``stage2.checkpoint``."""
    stage2 = "sam3" if str(cfg.stage2.tracker) == "sam3" else "file"
    return [
        Target(released_name(cfg.stage1.checkpoint), cfg.stage1.checkpoint),
        text_encoder_target(cfg),
        Target(released_name(cfg.stage2.checkpoint), cfg.stage2.checkpoint, stage2),
    ]


def targets_of(names: Sequence[str], cfg: PipelineConfig) -> list[Target]:
    """The targets of the command line's names, each once, in order.

    Raises:
        KeyError: a name that is no group, released file or weight setting.
    """
    if not names:
        return default_targets(cfg)
    released = {
        released_name(value): value
        for group in ("referdino", "sam2")
        for value in getattr(cfg.weights, group).values()
    }
    targets: list[Target] = []
    for name in names:
        if name in (*GROUPS, "all"):
            targets += group_targets(name, cfg)
        elif name in released:
            targets.append(Target(name, released[name]))
        elif is_hub_reference(name) or Path(name).exists():
            targets.append(Target(released_name(name), name))
        else:
            raise KeyError(name)
    unique = {(t.value, t.kind): t for t in targets}
    return list(unique.values())


@dataclass(frozen=True)
class FolderFiles:
    """What a kind of target needs of a folder (:func:`rvos.weights.resolve_weights`'s
    ``folder_files`` and ``optional_files``); a file target ignores it."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


def folder_files(kind: str) -> FolderFiles:
    """What a run's loader reads of a folder of this kind."""
    if kind == "text_encoder":
        from stage1_referdino.build import TEXT_ENCODER_EXTRAS, TEXT_ENCODER_FILES

        return FolderFiles(TEXT_ENCODER_FILES, TEXT_ENCODER_EXTRAS)
    if kind == "sam3":
        from stage2_sam2_refine.sam3 import HUB_FOLDER_EXTRAS, HUB_FOLDER_FILES

        return FolderFiles(HUB_FOLDER_FILES, HUB_FOLDER_EXTRAS)
    return FolderFiles(("*",))


def check_released_copy(reference: HubReference, copy: Path) -> str | None:
    """How a file in ``checkpoints/`` differs from the hub's, or ``None`` (also when the hub
    cannot be asked, or for a folder)."""
    if reference.is_folder:
        return None
    expected = hub_metadata(reference.repo_id, reference.revision or "main", [reference.path])
    if not expected or reference.path not in expected:
        return None
    problem = file_problem(copy, expected[reference.path])
    if problem is None:
        return None
    return f"{copy} {problem}; delete it (a run uses it before the cache) and run this again"


def fetch_target(target: Target) -> Path:
    """The target's local path, fetched and checked (see the module docstring).

    Raises:
        WeightsError: what is wrong, in one line.
        FileNotFoundError: a local path that is not there.
    """
    if not is_hub_reference(target.value):
        path = Path(target.value).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{target.value}: no such file or folder")
        return path
    reference = parse_reference(target.value)
    files = folder_files(target.kind)
    copy = released_copy(reference, required=files.required)
    if copy is not None:
        problem = check_released_copy(reference, copy)
        if problem:
            raise WeightsError(target.value, problem)
        return copy

    def fetch(force: bool) -> Path:
        return resolve_weights(
            target.value, folder_files=files.required, optional_files=files.optional, force=force
        )

    try:
        return fetch(force=False)
    except ChecksumError as err:
        logger.warning("%s; fetching it again", err)
    try:
        return fetch(force=True)
    except ChecksumError as err:
        forget_cached(err.blob)
        raise WeightsError(
            err.reference, f"the hub's file does not match its own checksum: {err.reason}"
        ) from None


def download(names: Sequence[str], overrides: Sequence[str] = ()) -> int:
    """Fetch the targets ``names`` (see the module docstring); report each; the exit status.

    Returns:
        0 when every target is there and checked, 1 when any failed, 2 for a bad argument.
    """
    try:
        cfg = load_config(overrides)
        targets = targets_of(names, cfg)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    except KeyError as err:
        logger.error(
            "%s: not a group (%s, all), a released file (%s) or a hub reference (hf://...)",
            err.args[0],
            ", ".join(GROUPS),
            ", ".join(t.name for g in ("referdino", "sam2") for t in group_targets(g, cfg)),
        )
        return 2
    failed = []
    for target in targets:
        logger.info("get     %s  <- %s", target.name, target.value)
        try:
            path = fetch_target(target)
        except (WeightsError, FileNotFoundError) as err:
            logger.error("FAILED  %s: %s", target.name, err)
            failed.append(target.name)
            continue
        logger.info("ok      %s  %s", target.name, path)
    from huggingface_hub import constants

    logger.info(
        "%d ok, %d failed (Hugging Face cache: %s)",
        len(targets) - len(failed),
        len(failed),
        constants.HF_HUB_CACHE,
    )
    if failed:
        logger.error("failed: %s; rerun the same command to try again", " ".join(failed))
        return 1
    return 0


def report_to_console() -> None:
    """Outcomes on stdout, failures and warnings on stderr, as plain lines."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="download_ckpts.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets",
        nargs="*",
        help="groups (referdino, sam2, bert, sam3, all), released file names, hub references "
        "(hf://...), or key=value configuration overrides; none: what the default run needs",
    )
    args = parser.parse_args(argv)
    overrides = [t for t in args.targets if "=" in t and not is_hub_reference(t)]
    names = [t for t in args.targets if t not in overrides]
    report_to_console()
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("rvos.weights").setLevel(logging.WARNING)
    return download(names, overrides)


if __name__ == "__main__":
    sys.exit(main())
