"""Ensembles of submission archives: the masks of several archives of one split, fused by
pixel-wise weighted voting into one archive of the same layout.

The vote: a pixel of a frame is foreground when the weights of the archives that mark it add up
to *more than half* of the total weight; a tie (exactly half) is background. With equal weights
that is a strict majority: 2 of 3 archives, 3 of 4, both of 2. Weights are compared exactly, as
integers in the same ratios (:func:`integer_weights`): ``0.1 + 0.2`` ties with ``0.3``.

Indexed PNGs (Ref-DAVIS17, one per annotator and frame) are voted per object: object ``i`` is
foreground where the archives labelling the pixel ``i`` weigh more than half of the total. Two
objects cannot both pass, so the voted objects never overlap.

:func:`plan_ensemble` checks everything before anything is written: every archive has the same
layout (:mod:`rvos.archive_layouts`), the same videos, expressions (or annotators) and frames
(those of the split, when one is given), and the same frame sizes; the first difference is
refused in one line naming the archive, the video, expression or frame and what differs.
:func:`write_ensemble` then writes the voted masks with the pipeline's archive writer
(:func:`rvos.archive.write_archive`: atomic, one video per worker process).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rvos.archive import AnnotatorLabelPngs, ArchiveWriter, build_archive_writer, write_archive
from rvos.archive_layouts import (
    Inventory,
    MemberLayout,
    annotator_number,
    archive_inventory,
    check_frames_agree,
    first_difference,
    member_parts,
    open_archive,
    survey,
)
from rvos.archive_limits import ArchiveLimits, default_limits
from rvos.archive_reader import decode_png
from rvos.davis import decode_label_png
from rvos.masks import RunLengthBuilder, RunLengthMasks


class EnsembleError(ValueError):
    """Archives (or weights) that cannot be ensembled; one line naming the first difference."""


# ----------------------------------------------------------------------------- the vote


def integer_weights(weights: Sequence[float]) -> tuple[int, ...]:
    """Integers in the ratios of ``weights`` (each read as the decimal it prints as), smallest.

    ``[0.5, 0.25, 0.25] -> (2, 1, 1)``; ``[1, 1] -> (1, 1)``.

    Raises:
        EnsembleError: a negative or non-finite weight, or weights that add up to 0.
    """
    for weight in weights:
        if not math.isfinite(weight) or weight < 0:
            raise EnsembleError(f"weights: {weight!r} is not a weight (a number >= 0)")
    exact = [Fraction(str(float(weight))) for weight in weights]
    scale = math.lcm(*(f.denominator for f in exact))
    numbers = [int(f * scale) for f in exact]
    if not any(numbers):
        raise EnsembleError(f"weights {list(weights)} add up to 0: give some archive a weight")
    divisor = math.gcd(*numbers)
    integers = tuple(n // divisor for n in numbers)
    if 2 * sum(integers) > np.iinfo(np.uint64).max:
        raise EnsembleError(
            f"weights {list(weights)} are too finely divided to be compared exactly: round them"
        )
    return integers


def vote(masks: Sequence[np.ndarray], weights: Sequence[int]) -> np.ndarray:
    """Weighted pixel-wise vote.

    Args:
        masks: one ``[H, W] bool`` mask per archive.
        weights: one integer weight per archive (:func:`integer_weights`).
    Returns:
        ``[H, W] bool``: where the weights of the masks covering a pixel exceed half of their
        total (a tie is background).
    """
    total = sum(weights)
    dtype = np.min_scalar_type(2 * total)  # unsigned, holds every sum of weights and its double
    votes = np.zeros(masks[0].shape, dtype=dtype)
    for mask, weight in zip(masks, weights, strict=True):
        if weight:  # adding 0/1 bytes times the weight: far faster than indexing with the mask
            votes += np.asarray(mask, dtype=bool).view(np.uint8) * dtype.type(weight)
    return votes * dtype.type(2) > total


def vote_labels(
    labels: Sequence[np.ndarray], weights: Sequence[int], num_objects: int
) -> np.ndarray:
    """Weighted vote per object of indexed masks.

    Args:
        labels: one ``[H, W]`` integer label image per archive (0 background, ``i`` object ``i``).
        weights: one integer weight per archive.
        num_objects: ``n``: the objects ``1..n`` to vote on (other labels are left out).
    Returns:
        ``[n, H, W] bool``: object ``i + 1``'s voted mask at index ``i`` (never overlapping).
    """
    return np.stack(
        [
            vote([image == obj_id for image in labels], weights)
            for obj_id in range(1, num_objects + 1)
        ]
    )


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class EnsemblePlan:
    """Checked archives and how to vote them (picklable: the archive writer's workers get it).

    Attributes:
        paths: the archives, in the order of ``weights``.
        weights: integer weights (:func:`integer_weights`).
        inventory: what every archive holds (all the same), in the order to write it.
        sizes: ``{video_id: (H, W)}``.
        objects: label layouts: ``{(video_id, anno_<k>): n}``, the objects ``1..n`` voted on.
        limits: what each archive may hold (archives may come from anyone).
    """

    paths: tuple[Path, ...]
    weights: tuple[int, ...]
    inventory: Inventory
    sizes: dict[str, tuple[int, int]]
    objects: dict[tuple[str, str], int]
    limits: ArchiveLimits

    @property
    def layout(self) -> MemberLayout:
        return self.inventory.layout


def plan_ensemble(
    paths: Sequence[str | Path],
    weights: Sequence[float],
    *,
    expected: Inventory | None = None,
    limits: ArchiveLimits | None = None,
) -> EnsemblePlan:
    """Check that the archives can be ensembled; nothing is written.

    Args:
        paths: the archives (zip files or folders).
        weights: one per archive.
        expected: what each archive must hold (a split's, :func:`rvos.archive_layouts.
            split_inventory`); ``None``: what the first archive holds.
        limits: what each archive may hold (``None``: ``evaluation.limits`` of
            ``configs/pipeline.yaml``).
    Raises:
        EnsembleError: wrong weights, or the first difference between the archives (layout,
            videos, expressions or annotators, frames, frame sizes; label layouts with a split:
            more objects than the annotator has expressions), naming the archive.
        ArchiveError, ValueError: an archive or member that cannot be read (naming it).
        FileNotFoundError: a missing archive.
    """
    paths = tuple(Path(p) for p in paths)
    if len(weights) != len(paths):
        raise EnsembleError(
            f"weights: {len(weights)} weight(s) for {len(paths)} archive(s); give one per archive"
        )
    integers = integer_weights(weights)
    limits = limits or default_limits()
    inventories = [_inventory(path, limits) for path in paths]
    _check_layouts(inventories, expected)
    reference = expected or inventories[0]
    check_frames_agree(reference)
    for inventory in inventories:
        difference = first_difference(inventory, reference)
        if difference is not None:
            raise EnsembleError(difference)
    sizes: dict[str, tuple[int, int]] | None = None
    max_labels: dict[tuple[str, str], int] = {}
    for path, inventory in zip(paths, inventories, strict=True):
        with open_archive(path, inventory.layout, limits) as (archive, _):
            found = survey(archive, inventory, sizes=sizes, reference=str(paths[0]))
        sizes = sizes or found.sizes
        for key, label in found.max_labels.items():
            max_labels[key] = max(max_labels.get(key, 0), label)
            _check_objects(inventory, expected, key, label)
    assert sizes is not None
    objects = {key: max(1, label) for key, label in max_labels.items()}
    if expected is not None:
        objects = {key: expected.objects[key] for key in objects}
    return EnsemblePlan(paths, integers, reference, sizes, objects, limits)


def _inventory(path: Path, limits: ArchiveLimits) -> Inventory:
    with open_archive(path, limits=limits) as (archive, layout):
        return archive_inventory(archive, layout)


def _check_layouts(inventories: Sequence[Inventory], expected: Inventory | None) -> None:
    """Every archive has the layout of the first (of the split, when given)."""
    reference = expected or inventories[0]
    for inventory in inventories:
        if inventory.layout != reference.layout:
            theirs, ours = inventory.layout, reference.layout
            raise EnsembleError(
                f"{inventory.source} is in the {theirs.name} layout ({theirs.members}), "
                f"{reference.source} in the {ours.name} layout ({ours.members}): an ensemble "
                "fuses archives of one benchmark's layout"
            )


def _check_objects(
    inventory: Inventory, expected: Inventory | None, key: tuple[str, str], label: int
) -> None:
    """A label layout's archive uses no label beyond the objects the split has."""
    if expected is None or label <= expected.objects[key]:
        return
    video_id, group = key
    raise EnsembleError(
        f"{inventory.source}: video {video_id!r}, annotator {group!r} has object {label}; "
        f"{expected.source} has {expected.objects[key]} for that annotator"
    )


# ----------------------------------------------------------------------------- writing


def object_key(group: str, obj_id: int) -> str:
    """The name of an annotator's object among a video's voted masks: ``anno_<k>/<obj_id>``."""
    return f"{group}/{obj_id}"


def voted_masks(plan: EnsemblePlan, video_id: str) -> tuple[list[str], dict[str, RunLengthMasks]]:
    """The voted masks of one video (the archive writer's loader).

    Returns:
        ``(frame names, {key: [T, H, W] runs})``; keys are the expression ids, or for label
        layouts the objects (:func:`object_key`).
    """
    frames = plan.inventory.frame_names(video_id)
    size = plan.sizes[video_id]
    layout = plan.layout
    masks: dict[str, RunLengthMasks] = {}
    with contextlib.ExitStack() as stack:
        archives = [
            stack.enter_context(open_archive(p, layout, plan.limits))[0] for p in plan.paths
        ]
        for group in plan.inventory.videos[video_id]:
            count = plan.objects.get((video_id, group), 0)
            builder = RunLengthBuilder(len(frames), (count, *size) if layout.labels else size)
            for frame_idx, frame in enumerate(frames):
                parts = member_parts(layout, video_id, group, frame)
                pngs = [(archive.read(*parts), archive.where(*parts)) for archive in archives]
                if layout.labels:
                    labels = [decode_label_png(data, where) for data, where in pngs]
                    builder.put(frame_idx, vote_labels(labels, plan.weights, count))
                else:
                    decoded = [decode_png(data, where) for data, where in pngs]
                    builder.put(frame_idx, vote(decoded, plan.weights))
            voted = builder.build()
            if layout.labels:
                for obj_idx in range(count):
                    masks[object_key(group, obj_idx + 1)] = voted.select(obj_idx, axis=1)
            else:
                masks[group] = voted
    return list(frames), masks


def ensemble_writer(plan: EnsemblePlan) -> ArchiveWriter:
    """The pipeline's writer of the plan's layout; label layouts: each annotator's objects
    ``1..n`` in order, so that object ``i`` is written as label ``i``."""
    if not plan.layout.labels:
        return build_archive_writer(plan.layout.name, {})
    groups = {
        video_id: {
            annotator_number(group): [
                object_key(group, obj_id)
                for obj_id in range(1, plan.objects[(video_id, group)] + 1)
            ]
            for group in groups
        }
        for video_id, groups in plan.inventory.videos.items()
    }
    return AnnotatorLabelPngs(groups=groups)


def expected_masks(plan: EnsemblePlan) -> dict[str, dict[str, Sequence[str]]]:
    """``{video_id: {key: frame names}}``: what :func:`voted_masks` gives for each video."""
    expected: dict[str, dict[str, Sequence[str]]] = {}
    for video_id, groups in plan.inventory.videos.items():
        frames = plan.inventory.frame_names(video_id)
        keys = (
            [object_key(g, i) for g in groups for i in range(1, plan.objects[(video_id, g)] + 1)]
            if plan.layout.labels
            else list(groups)
        )
        expected[video_id] = dict.fromkeys(keys, frames)
    return expected


def write_ensemble(
    plan: EnsemblePlan,
    out: Path,
    *,
    compress_level: int,
    jobs: int,
    stamp: Mapping[str, Any] | None = None,
) -> int:
    """Write the voted archive ``out`` atomically, in the plan's layout.

    Args:
        compress_level: PNG zlib level.
        jobs: worker processes, one video each (joblib ``n_jobs``).
        stamp: JSON-ready facts kept in the zip's comment.
    Returns:
        the number of PNGs written.
    """
    return write_archive(
        out,
        partial(voted_masks, plan),
        expected_masks(plan),
        compress_level=compress_level,
        jobs=jobs,
        desc=f"ensemble {out.name}",
        writer=ensemble_writer(plan),
        stamp=stamp,
    )
