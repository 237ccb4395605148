"""The bad-case report (:mod:`rvos.bad_cases`) of a run, and of an archive on its own.

After a run's archives (:func:`find_bad_cases`): the expressions whose final (fused) mask is empty
on every frame, from the last stage's records; kept objects of one expression whose tracked
masks overlap (mean IoU above ``bad_cases.duplicate_iou``), from the tracking stage's records;
expressions with spatial words (``bad_cases.spatial_words``), from the split; with ground truth,
the ``bad_cases.worst`` lowest-J&F expressions of the final archive. It goes into
``report.json`` (``bad_cases``), the run's printed summary, and ``--visualize`` draws the flagged
expressions first.

``run_pipeline.py badcases PRED.zip [data=<benchmark>] [--json OUT]`` (:func:`main`) reports the
same on any archive of a split, in any layout, except duplicated objects (an archive holds no
per-object masks): an expression is empty when none of its frames has a pixel (Ref-DAVIS17: its
object's label is on no frame of its annotator's PNGs); a missing expression or frame counts
as empty.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from referdino_plus.arguments import (
    add_overrides_argument,
    command_config,
    parse_with_overrides,
)
from referdino_plus.runtime import setup_logging
from referdino_plus.stages import LAST_STAGE, Fingerprints, get_stage
from rvos.bad_cases import (
    BadCases,
    DuplicateObjects,
    SpatialExpression,
    duplicate_objects,
    spatial_pattern,
    spatial_words,
    worst_scores,
)
from rvos.intermediates import IntermediateError
from rvos.io import write_json
from rvos.progress import progress_bar

if TYPE_CHECKING:
    from referdino_plus.config import BadCaseOptions, PipelineConfig
    from rvos.archive_layouts import MemberLayout
    from rvos.archive_limits import ArchiveLimits
    from rvos.archive_reader import PredictionArchive
    from rvos.scores import BenchmarkResult
    from rvos.splits import Split, Video

logger = logging.getLogger(__name__)

# The stage whose records hold each kept object's tracked masks
# (rvos.intermediates.ExpressionRefinement.sam2_masks: [T, K, H, W]).
TRACKING_STAGE = 2


def settings(options: BadCaseOptions) -> dict[str, object]:
    """The report's record of its settings (:attr:`BadCases.settings`)."""
    return {"duplicate_iou": options.duplicate_iou, "worst": options.worst, "shown": options.shown}


def report_field(found: BadCases | None) -> dict[str, object] | None:
    """``report.json``'s ``bad_cases``: what the report found, or ``None`` (not looked for)."""
    return None if found is None else found.to_json()


def find_bad_cases(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split,
    evaluations: Mapping[str, BenchmarkResult] | None = None,
) -> BadCases:
    """The bad cases of a run whose records are finished (see the module docstring); videos
    whose records are missing or of another configuration are left out.

    Args:
        evaluations: ``{archive name: its evaluation}`` of the run; the last stage's gives the
            worst scores.
    """
    options = cfg.bad_cases
    work_dir = Path(cfg.work_dir)
    found = BadCases(settings=settings(options))
    tracking = get_stage(TRACKING_STAGE)
    for video_id in progress_bar(split.video_ids, desc="bad cases", unit="video", leave=False):
        final = _record(LAST_STAGE, work_dir, video_id, fingerprints)
        if final is not None:
            masks = LAST_STAGE.archive_masks(final)
            found.empty += [(video_id, e) for e, m in masks.items() if not m.any()]
        tracked = _record(tracking, work_dir, video_id, fingerprints)
        if tracked is not None:
            for exp_id, refined in tracked.expressions.items():
                found.duplicates += _duplicates(video_id, exp_id, refined, options.duplicate_iou)
    found.spatial = find_spatial(split, options.spatial_words)
    evaluation = (evaluations or {}).get(LAST_STAGE.archive)
    if evaluation is not None:
        found.worst = worst_scores(evaluation.per_expression, options.worst)
    return found


def _record(stage, work_dir: Path, video_id: str, fingerprints: Fingerprints):
    """The stage's record of a video made with the run's configuration, or ``None``."""
    if not stage.is_finished(work_dir, video_id, fingerprints[stage.number]):
        return None
    try:
        return stage.load_record(stage.record_path(work_dir, video_id))
    except IntermediateError as err:
        logger.warning("bad cases: %s", err)
        return None


def _duplicates(video_id: str, exp_id: str, refined, threshold: float) -> list[DuplicateObjects]:
    """The overlapping tracked objects of one expression's stage-2 output."""
    columns, frames = refined.kept_columns.tolist(), refined.prompt_frames.tolist()
    return [
        DuplicateObjects(
            video_id,
            exp_id,
            (first, second),
            (int(columns[first]), int(columns[second])),
            (int(frames[first]), int(frames[second])),
            iou,
        )
        for first, second, iou in duplicate_objects(refined.sam2_masks, threshold)
    ]


def find_spatial(split: Split, words: Sequence[str]) -> list[SpatialExpression]:
    """The expressions of ``split`` whose sentence holds one of ``words``."""
    pattern = spatial_pattern(words)
    found = []
    for video_id, video in split.videos.items():
        for exp_id, expression in video.expressions.items():
            matched = spatial_words(expression.text, pattern)
            if matched:
                found.append(SpatialExpression(video_id, exp_id, matched))
    return found


# ----------------------------------------------------------------------------- an archive


def archive_bad_cases(
    pred: Path,
    split: Split,
    options: BadCaseOptions,
    evaluation: BenchmarkResult | None,
    limits: ArchiveLimits | None = None,
) -> BadCases:
    """The bad cases of an archive of ``split`` (see the module docstring), read within
    ``limits`` (``None``: ``evaluation.limits`` of ``configs/pipeline.yaml``)."""
    from rvos.archive_layouts import open_archive

    found = BadCases(settings=settings(options))
    with open_archive(pred, limits=limits) as (archive, layout):
        for video_id, video in progress_bar(
            split.videos.items(), desc="bad cases", unit="video", leave=False
        ):
            found.empty += [(video_id, e) for e in _empty_expressions(archive, layout, video)]
    found.spatial = find_spatial(split, options.spatial_words)
    if evaluation is not None:
        found.worst = worst_scores(evaluation.per_expression, options.worst)
    return found


def _empty_expressions(archive: PredictionArchive, layout: MemberLayout, video: Video) -> list[str]:
    """The expressions of ``video`` that have no pixel on any frame of ``archive``."""
    from rvos.archive_layouts import member_parts
    from rvos.archive_reader import decode_png
    from rvos.davis import annotator_dir, decode_label_png

    def frames(group: str, video_id: str):
        """The decoded frames of a group (missing ones left out), one at a time."""
        for frame in video.frame_names:
            parts = member_parts(layout, video_id, group, frame)
            names = archive.file_names(*parts[:2]) or set()
            if parts[2] in names:
                data = archive.read(*parts)
                where = archive.where(*parts)
                yield decode_label_png(data, where) if layout.labels else decode_png(data, where)

    if not layout.labels:
        return [e for e in video.expressions if not any(m.any() for m in frames(e, video.video_id))]
    empty = []
    for annotator, exp_ids in video.annotator_groups().items():
        present: set[int] = set()
        for labels in frames(annotator_dir(annotator), video.video_id):
            present.update(int(v) for v in set(labels.ravel().tolist()))
        empty += [e for obj_idx, e in enumerate(exp_ids) if obj_idx + 1 not in present]
    return empty


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py badcases",
        description="List an archive's bad cases: expressions empty on every frame, expressions "
        "with spatial words and, when the split has ground truth, the lowest-J&F ones.",
        epilog="key=value: overrides of configs/pipeline.yaml: data=<benchmark> (the split), "
        "bad_cases.* (the word list, how many worst expressions)",
    )
    parser.add_argument("pred", type=Path, help="zip file or folder of masks")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_overrides_argument(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """``badcases PRED [data=<benchmark>] [--json OUT]``; returns the exit status (0 listed,
    1 an unreadable archive or split, 2 bad arguments)."""
    parser = build_parser()
    args = parse_with_overrides(
        parser, argv, stray=lambda word: parser.error(f"unrecognized argument: {word}")
    )
    setup_logging(args.quiet)
    from rvos.evaluation import evaluate
    from rvos.splits import Split

    cfg = command_config(args.overrides)
    if cfg is None:
        return 2
    try:
        split = Split(cfg.data.root, cfg.data.layout)
        evaluation = None
        if cfg.data.metric and split.has_ground_truth and cfg.bad_cases.worst:
            evaluation = evaluate(
                cfg.data.metric,
                args.pred,
                split,
                jobs=cfg.evaluation.jobs,
                limits=cfg.evaluation.limits,
            )
        found = archive_bad_cases(
            args.pred, split, cfg.bad_cases, evaluation, cfg.evaluation.limits
        )
    except (ValueError, OSError) as err:
        logger.error("%s", err)
        return 1
    if args.json is not None:
        try:
            write_json(args.json, found.to_json())
        except OSError as err:
            logger.error("%s", err)
            return 1
        logger.info("bad cases written to %s", args.json)
    print(found.format())
    return 0
