"""Everything a run needs, checked before any model loads (a real run's stage 1 takes hours).

:func:`preflight` collects every problem at once — the split (:func:`open_split`), model and
checkpoint files of the stages to run (each checkpoint's model family included), write access and
free space for ``work_dir`` and ``submission_dir``, every frame decoded, the ground truth covering
the split — and raises one :class:`PreflightError` listing them all. Problems that only cost the
evaluation (a gap in ``mask_dict.json``) are warnings: the run goes on and skips the scores.

The free space needed is estimated from what the run will write (:func:`space_needed`): the
records of the videos each stage still has to process, at their frame sizes, frame counts,
expressions and queries, the archives, the pictures, and a margin.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from referdino_plus.config import PipelineConfig
from referdino_plus.stages import STAGES, get_stage
from rvos.archive import build_archive_writer
from rvos.frames import check_frames
from rvos.mevis import DataError, object_masks_problem
from rvos.proposals import check_answer_rule
from rvos.splits import Split
from rvos.weights import WeightsError, checkpoint_setting_problem

logger = logging.getLogger(__name__)

DOWNLOAD_HINT = "run `bash download_ckpts.sh` (see README)"
FRAME_CHECK_CACHE = "frame_check.json"  # in work_dir

# What a run writes, for the free-space check. Measured with this project's writers (the PNG
# encoder at compress level 1, the stage records) on masks of 1 to 8 elliptic blobs at 64x48 to
# 1920x1080; tests/test_failures.py checks the estimate against a real run and against records
# and archives of 1280x720 masks.
PNG_FIXED_BYTES = 70  # a mask PNG's signature, IHDR, IDAT and IEND chunks, zlib header
PNG_BYTES_PER_PIXEL = 1 / 220  # deflate of the 0/255 rows (an empty 1280x720 mask: 4.1 kB)
PNG_BYTES_PER_ROW = 10  # more per row of the frame where the mask's boundaries cross it
MEMBER_BYTES = 250  # a zip member's local and central headers and name (npz: + .npy header)
RECORD_BYTES = 2000  # a record's own header, members and end of zip
RECORD_BYTES_PER_FRAME = 32  # a frame name in a record's header
# A run-length mask, compressed, per row of the frame (an object in one piece: 1.0, in two: 1.5,
# three: 2.0 to 2.2).
RLE_BYTES_PER_ROW = 2
QUERY_FRAME_BYTES = 28  # a query's float32 score and box, and its mask's offset, on one frame
# Members of one expression in each stage's record (rvos.intermediates: arrays, masks as 3).
RECORD_MEMBERS = {1: 9, 2: 8, 3: 3}
# SAM 2 objects per expression the estimate allows for (the queries above
# stage2.score_threshold; fewer when the model returns fewer).
SAM2_OBJECTS = 5
LEGACY_STRIDE = 4  # ReferDINO-Plus files keep mask logits at stride 4 of the network input
RGB_PNG_BYTES_PER_PIXEL = 2.0  # the run pictures (visualize.enabled): frames as RGB PNG
FRAME_CHECK_BYTES_PER_FRAME = 200  # an entry of work_dir/frame_check.json
# Logs, configuration copies and report.json, plus a margin on the estimate.
MARGIN_BYTES = 1_000_000
MARGIN_FRACTION = 0.1


class PreflightError(RuntimeError):
    """A run that cannot start; the message lists every problem found, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"cannot start: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            text = f"cannot start, {len(self.problems)} problems:\n{listed}"
        super().__init__(text)


@dataclass
class Preflight:
    """What the checks found that does not stop the run."""

    evaluate: bool = True  # the split's ground truth covers every expression
    warnings: list[str] = field(default_factory=list)


def check_benchmark(cfg: PipelineConfig, split: Split) -> None:
    """Fail before any work when the benchmark's answer rule or archive does not fit the split.

    Raises:
        DataError: naming the ``data.*`` keys that disagree.
    """
    check_answer_rule(cfg.data.answer, split)
    try:
        build_archive_writer(cfg.data.archive, split.videos)
    except ValueError as err:
        raise DataError(str(err)) from None


def open_split(cfg: PipelineConfig, stages: Sequence[int]) -> Split:
    """The run's split (``data.root``, ``data.layout``), checked against the benchmark.

    Raises:
        PreflightError: the split cannot be read or does not fit the benchmark; listed with
            everything else that would stop the run (model files, folders), so that one
            message says all that is wrong.
    """
    try:
        split = Split(cfg.data.root, cfg.data.layout)
        check_benchmark(cfg, split)
    except DataError as err:
        problems = [str(err), *model_problems(cfg, stages)]
        problems += [p for p in folder_problems(cfg).values() if p]
        raise PreflightError(problems) from None
    return split


def model_problems(cfg: PipelineConfig, stages: Sequence[int]) -> list[str]:
    """Missing or unusable model files of the stages to run, checkpoints of another model family
    included (no model is built; see :func:`rvos.checkpoints.checkpoint_family_problem`)."""
    problems = []
    if 1 in stages and not cfg.stage1.legacy_dir:
        problems += _stage1_problems(cfg)
    if 2 in stages:
        from stage2_sam2_refine.tracker import model_problems as tracker_problems

        problems += tracker_problems(cfg.stage2, hint=DOWNLOAD_HINT)
    if cfg.stage1.legacy_dir and (1 in stages or 2 in stages):
        folder = Path(cfg.stage1.legacy_dir)
        if not folder.is_dir():
            problems.append(f"stage1.legacy_dir={folder}: no such folder")
    return problems


def _stage1_problems(cfg: PipelineConfig) -> list[str]:
    """The model configuration (every key in its range, an architecture that builds), the
    text encoder and the checkpoint of stage 1, and whether the checkpoint fits the
    architecture (:func:`stage1_referdino.build.checkpoint_fit_problem`: no model loads)."""
    from stage1_referdino.build import (
        ReferDINOConfig,
        checkpoint_fit_problem,
        load_model_config,
        resolve_text_encoder,
        text_encoder_problem,
    )

    problems = []
    options = cfg.stage1
    config = source = None
    try:
        values, base_dir = load_model_config(options.model)
        config = ReferDINOConfig.from_dict(values)
    except (FileNotFoundError, ValueError) as err:
        problems.append(f"stage1.model={options.model}: {' '.join(str(err).split())}")
    else:
        try:
            source = resolve_text_encoder(
                options.text_encoder or config.text_encoder_type, base_dir
            )
            problem = text_encoder_problem(source)
        except FileNotFoundError as err:
            problem = str(err)
        except WeightsError as err:  # a hub reference: the key that names it
            problem = (
                f"stage1.text_encoder={err}"
                if options.text_encoder
                else f"stage1.model={options.model}: text_encoder_type={err}"
            )
        problems += [problem] if problem else []
    problem = checkpoint_setting_problem(
        options.checkpoint, key="stage1.checkpoint", family="ReferDINO", hint=DOWNLOAD_HINT
    )
    if problem is None and not problems:
        fit = checkpoint_fit_problem(config, source, options.checkpoint)
        problem = (
            fit
            and f"stage1.checkpoint={options.checkpoint} and stage1.model={options.model}: {fit}"
        )
    return problems + ([problem] if problem else [])


def writable_problem(folder: Path, key: str) -> str | None:
    """Whether ``folder`` can be created and written to (a file is created and removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return f"{key}={folder}: cannot write there ({reason}); choose another {key}= or fix it"
    return None


def folder_problems(cfg: PipelineConfig) -> dict[str, str | None]:
    """``{key: problem or None}`` of ``work_dir`` and ``submission_dir`` (made if missing)."""
    return {
        key: writable_problem(Path(getattr(cfg, key)), key)
        for key in ("work_dir", "submission_dir")
    }


def format_size(num_bytes: float) -> str:
    """``12 kB``, ``3.4 MB``, ``1.2 GB``: the unit that fits."""
    if num_bytes >= 1e9:
        return f"{num_bytes / 1e9:.1f} GB"
    if num_bytes >= 1e6:
        return f"{num_bytes / 1e6:.1f} MB"
    return f"{num_bytes / 1e3:.0f} kB"


def space_problem(folder: Path, key: str, needed: int) -> str | None:
    """Whether ``folder``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        return (
            f"{key}={folder}: {format_size(free)} free, the run needs about "
            f"{format_size(needed)}; free some space or choose another {key}="
        )
    return None


def shared_space_problem(folders: Mapping[str, Path], needed: Mapping[str, int]) -> str | None:
    """Whether the one file system of ``folders`` (``{key: folder}``) has room for all of them."""
    free = shutil.disk_usage(next(iter(folders.values()))).free
    total = sum(needed.values())
    if free < total:
        named = " and ".join(f"{key}={folder}" for key, folder in folders.items())
        parts = ", ".join(f"{key} {format_size(needed[key])}" for key in folders)
        return (
            f"{named} (one file system): {format_size(free)} free, the run needs about "
            f"{format_size(total)} ({parts}); free some space or choose other folders"
        )
    return None


@dataclass(frozen=True)
class VideoShape:
    """What the size of a video's outputs depends on."""

    height: int
    width: int
    num_frames: int
    num_expressions: int


def png_bytes(height: int, width: int) -> float:
    """A mask PNG of ``height x width`` in an archive, its zip member included (bound)."""
    pixels = height * width
    return (
        MEMBER_BYTES + PNG_FIXED_BYTES + pixels * PNG_BYTES_PER_PIXEL + height * PNG_BYTES_PER_ROW
    )


def record_bytes(stage: int, video: VideoShape, queries: int) -> float:
    """A stage's record of ``video`` (``rvos.intermediates``), ``queries`` per expression from
    stage 1 (bound)."""
    mask = video.height * RLE_BYTES_PER_ROW
    if stage == 1:  # every query's masks, scores and boxes, and the answer
        per_frame = queries * (mask + QUERY_FRAME_BYTES) + mask
    elif stage == 2:  # the SAM 2 objects' masks and the kept queries' stage-1 union
        per_frame = (min(queries, SAM2_OBJECTS) + 1) * mask
    else:  # the fused masks
        per_frame = mask
    per_expression = RECORD_MEMBERS[stage] * MEMBER_BYTES + video.num_frames * per_frame
    return (
        RECORD_BYTES
        + video.num_frames * RECORD_BYTES_PER_FRAME
        + video.num_expressions * per_expression
    )


def legacy_bytes(video: VideoShape, queries: int, short_side: int) -> float:
    """A ReferDINO-Plus file of ``video`` (``stage1.export_legacy``): float32 scores, boxes and
    mask logits at stride 4 of the network input, uncompressed."""
    scale = short_side / min(video.height, video.width)
    logits = (video.height * scale / LEGACY_STRIDE) * (video.width * scale / LEGACY_STRIDE)
    per_expression = MEMBER_BYTES + video.num_frames * queries * (4 * logits + 20)
    return RECORD_BYTES + video.num_expressions * per_expression


def picture_bytes(video: VideoShape, cfg: PipelineConfig) -> float:
    """The run pictures of ``video`` (``visualize.enabled``): per expression, three rows of
    ``visualize.num_frames`` frames ``visualize.tile_height`` high."""
    options = cfg.visualize
    width = options.tile_height * video.width / video.height
    pixels = 3 * options.tile_height * options.num_frames * width
    return video.num_expressions * (MEMBER_BYTES + pixels * RGB_PNG_BYTES_PER_PIXEL)


def queries_per_expression(cfg: PipelineConfig) -> int:
    """Queries a stage-1 record keeps per expression: ``stage1.top_k``, at most what the model
    returns (15 for the released configurations)."""
    from stage1_referdino.build import ReferDINOConfig, load_model_config

    try:
        returned = ReferDINOConfig.from_dict(load_model_config(cfg.stage1.model)[0]).output_queries
    except (FileNotFoundError, ValueError, TypeError):
        returned = ReferDINOConfig.from_dict(load_model_config({})[0]).output_queries  # base: 15
    top_k = cfg.stage1.top_k
    return returned if top_k is None else min(top_k, returned)


def space_needed(
    cfg: PipelineConfig,
    split: Split,
    stages: Sequence[int],
    pending: Mapping[int, Sequence[str]],
    sizes: Mapping[str, tuple[int, int]],
) -> dict[str, int]:
    """Bytes the run will add to ``work_dir`` and ``submission_dir``, margin included.

    Args:
        stages: the stages to run.
        pending: per stage to run, the videos it will write (a record that is replaced counts
            only what it may grow by).
        sizes: ``(H, W)`` of each video's frames.
    Returns:
        ``{"work_dir": bytes, "submission_dir": bytes}``.
    """
    work_dir = Path(cfg.work_dir)
    # Stage 3's records hold no query; the count reads stage 1's model code, loaded only if needed.
    queries = queries_per_expression(cfg) if {1, 2} & set(stages) else 0
    shapes = {
        vid: VideoShape(*sizes[vid], video.num_frames, len(video.expressions))
        for vid, video in split.videos.items()
    }
    work = 0.0
    for stage in stages:
        for vid in pending.get(stage, split.video_ids):
            new = record_bytes(stage, shapes[vid], queries)
            old = get_stage(stage).record_path(work_dir, vid)
            work += max(0.0, new - (old.stat().st_size if old.is_file() else 0))
            if stage == 1 and cfg.stage1.export_legacy:
                work += legacy_bytes(shapes[vid], queries, cfg.stage1.short_side)
    if cfg.data.validate_frames:
        work += FRAME_CHECK_BYTES_PER_FRAME * sum(v.num_frames for v in shapes.values())
    if cfg.visualize.enabled:
        work += sum(picture_bytes(shape, cfg) for shape in shapes.values())
    # The archives, one per stage, one PNG per frame and expression (fewer for Ref-DAVIS17's
    # annotator PNGs); an archive that is replaced stays until its new copy is whole.
    archives = len(STAGES) * sum(
        shape.num_frames * shape.num_expressions * png_bytes(shape.height, shape.width)
        for shape in shapes.values()
    )
    return {
        "work_dir": int(work * (1 + MARGIN_FRACTION) + MARGIN_BYTES),
        "submission_dir": int(archives * (1 + MARGIN_FRACTION) + MARGIN_BYTES),
    }


def space_problems(folders: Mapping[str, Path], needed: Mapping[str, int]) -> list[str]:
    """Free-space problems of the run's folders; folders on one file system share its room."""
    devices: dict[int, dict[str, Path]] = {}
    for key, folder in folders.items():
        devices.setdefault(os.stat(folder).st_dev, {})[key] = folder
    problems = []
    for group in devices.values():
        if len(group) > 1:
            problem = shared_space_problem(group, {key: needed[key] for key in group})
        else:
            ((key, folder),) = group.items()
            problem = space_problem(folder, key, needed[key])
        problems += [problem] if problem else []
    return problems


def ground_truth_gaps(
    split: Split, sizes: Mapping[str, tuple[int, int]] | None = None
) -> list[str]:
    """Expressions whose ``anno_id`` masks in ``mask_dict.json`` are missing, of the wrong
    length, or not masks pycocotools can decode (of the video's ``(H, W)`` in ``sizes``); one
    line each, naming the expression, the object and what is wrong."""
    try:
        mask_dict = split.mask_dict
    except DataError as err:
        return [str(err)]
    gaps = []
    problems: dict[tuple, str | None] = {}  # an object's masks, checked once per frame size
    for video_id, video in split.videos.items():
        height, width = (sizes or {}).get(video_id, (None, None))
        for exp_id, expression in video.expressions.items():
            for anno_id in expression.anno_ids:
                key = (anno_id, height, width)
                if key not in problems:
                    problems[key] = object_masks_problem(
                        mask_dict.get(anno_id), video, height, width
                    )
                if problems[key]:
                    gaps.append(f"{video_id}/{exp_id} (anno_id {anno_id}: {problems[key]})")
    return gaps


def preflight(
    cfg: PipelineConfig,
    split: Split,
    stages: Sequence[int],
    *,
    pending: Mapping[int, Sequence[str]] | None = None,
) -> Preflight:
    """Check everything the run needs before any model loads.

    Args:
        pending: per stage to run, the videos it has to process (default: all), for the space
            estimate.
    Raises:
        PreflightError: listing every problem (model files, folders, space, frames).
    """
    work_dir, submission_dir = Path(cfg.work_dir), Path(cfg.submission_dir)
    problems = model_problems(cfg, stages)
    folders = folder_problems(cfg)
    problems += [p for p in folders.values() if p]
    frame_problems = []
    sizes: dict[str, tuple[int, int]] | None = None
    if cfg.data.validate_frames:
        videos = {vid: split.frame_paths(vid) for vid in split.video_ids}
        cache = work_dir / FRAME_CHECK_CACHE if folders["work_dir"] is None else None
        frame_problems = check_frames(videos, cache=cache)
        problems += frame_problems
    if not frame_problems and not any(folders.values()):
        try:
            sizes = {vid: split.frame_size(vid) for vid in split.video_ids}
        except (OSError, DataError):  # unreadable (data.validate_frames=false): fails later
            sizes = None
        if sizes is not None:
            needed = space_needed(cfg, split, stages, pending or {}, sizes)
            folders_by_key = {"work_dir": work_dir, "submission_dir": submission_dir}
            problems += space_problems(folders_by_key, needed)
    if problems:
        raise PreflightError(problems)
    result = Preflight()
    if cfg.evaluation.enabled and split.has_ground_truth and split.layout.mask_file:
        gaps = ground_truth_gaps(split, sizes)
        if gaps:
            result.evaluate = False
            named = ", ".join(gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
            result.warnings.append(
                f"{split.ground_truth_path} does not cover {len(gaps)} expression(s) ({named}): "
                "the archives are written but not evaluated"
            )
    for warning in result.warnings:
        logger.warning("%s", warning)
    return result
