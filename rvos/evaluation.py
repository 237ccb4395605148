"""Score a MeViS-layout prediction archive against a split's ground truth (J, F and J&F).

The prediction is a zip file or a folder holding ``<video_id>/<exp_id>/<frame_name>.png`` at its
top level; the split (read through :class:`rvos.mevis.MevisSplit`, with its id checks) has
``meta_expressions.json`` and ``mask_dict.json``. Every expression of every video listed in
``meta_expressions.json`` is scored, as the official MeViS evaluation does:

- a prediction pixel is foreground when its grayscale value is nonzero (PNGs are read with
  OpenCV's grayscale decoder, like the official script);
- the ground truth of an expression is the union of its ``anno_id`` masks; a ``null`` RLE is an
  empty mask;
- J and F are averaged over an expression's frames, then over expressions;
  ``J&F = (J + F) / 2``;
- a video missing from ``PRED`` scores J = F = 0 for each of its expressions; so does a missing
  expression folder; a missing frame PNG is an empty mask (with a warning naming it).

Scores are fractions in ``[0, 1]`` in :class:`EvaluationResult`; :func:`format_table` shows
percentages with two decimals, like the MeViS leaderboard. The command line is
``python -m stage3_fusion.evaluate``.

MeViS v2 (:func:`evaluate_mevis_v2`) adds expressions that refer to nothing (an empty ``anno_id``
list: empty ground truth on every frame) and reports, beside J, F and J&F over all expressions:

- ``N-acc``: no-target expressions answered with empty masks on every frame / no-target
  expressions;
- ``T-acc``: target expressions answered with a non-empty mask on some frame / target
  expressions;
- ``J&F-T``: J&F over the target expressions only.

A missing video or expression counts as a wrong answer for both accuracies. A metric is selected by
name (``data.metric``, :data:`METRICS`); each returns a :class:`BenchmarkResult`.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from joblib import Parallel, delayed
from PIL import Image, UnidentifiedImageError

from rvos.metrics import DEFAULT_BOUND_TH, frame_scores, mean_scores
from rvos.mevis import MASK_FILE, DataError, MevisSplit, gt_frame_mask, gt_frame_size
from rvos.progress import progress_bar
from rvos.splits import Split

logger = logging.getLogger(__name__)

PNG_SUFFIX = ".png"
# Warnings list at most this many missing frame names per expression.
_MAX_NAMED_FRAMES = 5


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExpressionScore:
    """Scores of one expression.

    Attributes:
        j: mean region similarity over the frames, in ``[0, 1]``.
        f: mean boundary F-measure over the frames, in ``[0, 1]``.
        status: ``"ok"``, ``"missing_video"`` or ``"missing_expression"`` (both score 0).
        missing_frames: frame names without a PNG, scored as empty predictions.
        has_foreground: whether the prediction has a foreground pixel on some frame.
    """

    j: float
    f: float
    status: str = "ok"
    missing_frames: tuple[str, ...] = ()
    has_foreground: bool = False

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass(frozen=True)
class EvaluationResult:
    """J, F and J&F of a prediction archive (fractions in ``[0, 1]``).

    ``per_expression`` maps ``(video_id, exp_id)`` to its score, in ``meta_expressions.json``
    order.
    """

    j: float
    f: float
    jf: float
    per_expression: dict[tuple[str, str], ExpressionScore] = field(repr=False)

    def count(self, status: str) -> int:
        """Number of expressions with the given ``status``."""
        return sum(score.status == status for score in self.per_expression.values())

    def missing_videos(self) -> list[str]:
        """Ids of the videos absent from the prediction."""
        missing = (v for (v, _), s in self.per_expression.items() if s.status == "missing_video")
        return list(dict.fromkeys(missing))

    def to_json(self) -> dict:
        """JSON-ready totals and ``{video_id: {exp_id: {...}}}`` scores."""
        videos: dict[str, dict[str, dict]] = {}
        for (video_id, exp_id), score in self.per_expression.items():
            videos.setdefault(video_id, {})[exp_id] = {
                "J": score.j,
                "F": score.f,
                "J&F": score.jf,
                "status": score.status,
                "missing_frames": list(score.missing_frames),
            }
        return {
            "J": self.j,
            "F": self.f,
            "J&F": self.jf,
            "num_expressions": len(self.per_expression),
            "num_missing_videos": len(self.missing_videos()),
            "num_missing_expressions": self.count("missing_expression"),
            "per_expression": videos,
        }

    def summary(self) -> dict[str, float]:
        """``{"J", "F", "J&F"}`` (fractions)."""
        return {"J": self.j, "F": self.f, "J&F": self.jf}

    def format_table(self) -> str:
        """J, F and J&F in percent."""
        return format_summary(self.summary())


class BenchmarkResult(Protocol):
    """What every metric returns (:data:`METRICS`); scores are fractions in ``[0, 1]``."""

    @property
    def jf(self) -> float: ...

    @property
    def per_expression(self) -> Mapping[tuple[str, str], Any]:
        """``(video_id, key) -> score`` with a ``jf`` attribute, one per scored unit (an
        expression; Ref-DAVIS17: an annotator's object), for the J&F-per-video plot."""
        ...

    def summary(self) -> dict[str, float]:
        """The headline scores: ``J``, ``F`` and ``J&F`` first, then the metric's own."""
        ...

    def to_json(self) -> dict: ...

    def format_table(self) -> str:
        """The scores in percent, as the benchmark's leaderboard shows them."""
        ...


@dataclass(frozen=True)
class MevisV2Result:
    """MeViS v2 scores: J, F and J&F over all expressions, the no-target and target accuracies,
    and J&F over the target expressions.

    Attributes:
        scores: the J and F of every expression (no-target ones included).
        targets: ``(video_id, exp_id) -> whether the expression refers to something``.
    """

    scores: EvaluationResult
    targets: dict[tuple[str, str], bool] = field(repr=False)

    @property
    def jf(self) -> float:
        return self.scores.jf

    @property
    def per_expression(self) -> dict[tuple[str, str], ExpressionScore]:
        return self.scores.per_expression

    def accuracies(self) -> dict[str, float]:
        """``N-acc``, ``T-acc`` and ``J&F-T``; a key is left out when its set is empty."""
        per_expression = self.scores.per_expression
        no_target = [key for key, is_target in self.targets.items() if not is_target]
        target = [key for key, is_target in self.targets.items() if is_target]
        result = {}
        if no_target:
            right = [
                per_expression[key].status == "ok" and not per_expression[key].has_foreground
                for key in no_target
            ]
            result["N-acc"] = sum(right) / len(no_target)
        if target:
            right = [
                per_expression[key].status == "ok" and per_expression[key].has_foreground
                for key in target
            ]
            result["T-acc"] = sum(right) / len(target)
            j, f = mean_scores([(per_expression[k].j, per_expression[k].f) for k in target])
            result["J&F-T"] = (j + f) / 2
        return result

    def summary(self) -> dict[str, float]:
        return {**self.scores.summary(), **self.accuracies()}

    def to_json(self) -> dict:
        """:meth:`EvaluationResult.to_json` plus the accuracies, the number of no-target
        expressions and, per expression, whether it has a target and a non-empty prediction."""
        data = {**self.scores.to_json(), **self.accuracies()}
        data["num_no_target"] = sum(not is_target for is_target in self.targets.values())
        for (video_id, exp_id), score in self.scores.per_expression.items():
            entry = data["per_expression"][video_id][exp_id]
            entry["target"] = self.targets[(video_id, exp_id)]
            entry["predicted_foreground"] = score.has_foreground
        return data

    def format_table(self) -> str:
        return format_summary(self.summary())


# ----------------------------------------------------------------------------- ground truth


def read_split(data_root: str | Path) -> tuple[Split, dict[str, list]]:
    """The split and its ground truth (``mask_dict.json``: ``anno_id -> [RLE or None]``).

    Raises:
        DataError: ``meta_expressions.json`` is missing or invalid, or ``mask_dict.json`` is
            missing (it only exists for splits with released ground truth, e.g. ``train`` and
            ``valid_u``; ``valid`` and ``test`` are scored by the challenge server) or invalid.
    """
    return _mask_dict(MevisSplit(data_root))


def _mask_dict(split: Split) -> tuple[Split, dict[str, list]]:
    """``(split, mask_dict)``; :class:`DataError` when the split has no ``mask_dict.json``."""
    if split.layout.mask_file is None:
        raise DataError(
            f"data.layout={split.layout.name} has no mask_dict.json ground truth: this metric "
            "needs a MeViS-layout split"
        )
    if not split.has_ground_truth:
        raise DataError(
            f"{split.root / MASK_FILE} not found: ground truth is needed to evaluate; MeViS "
            "releases it for train and valid_u only (valid and test are scored by the challenge "
            "server)"
        )
    return split, split.mask_dict


class PredictionArchive:
    """Read access to ``<video_id>/<exp_id>/<frame_name>.png`` in a zip file or a folder.

    Any three-level member layout reads the same way: Ref-DAVIS17's
    ``anno_<k>/<video_id>/<frame_name>.png`` is ``(anno_<k>, video_id, file)`` here.
    :meth:`step_into_wrapper` handles the common mistake of an archive whose masks sit in one
    wrapper folder (``Annotations/<video_id>/...``) instead of at the top level.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.prefix = ""  # the wrapper folder stepped into, with a trailing "/"
        self._zip: zipfile.ZipFile | None = None
        self._index: dict[tuple[str, str], set[str]] = {}
        self._zip_videos: set[str] = set()
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise FileNotFoundError(f"prediction {self.path} not found")
        if not zipfile.is_zipfile(self.path):
            raise ValueError(f"prediction {self.path} is neither a folder nor a zip file")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise ArchiveError(
                f"prediction {self.path} is a damaged zip file ({err}); write or download it again"
            ) from None
        self._build_index()

    def _build_index(self) -> None:
        """Index the zip's ``video/``, ``video/exp/`` and ``video/exp/file`` entries (under the
        prefix)."""
        self._index.clear()
        self._zip_videos.clear()
        assert self._zip is not None
        for name in self._zip.namelist():
            if name.startswith(self.prefix):
                self._add_to_index(name[len(self.prefix) :].split("/"))

    def _add_to_index(self, parts: list[str]) -> None:
        if len(parts) < 2 or not parts[0]:
            return
        self._zip_videos.add(parts[0])
        if len(parts) < 3 or not parts[1]:
            return
        files = self._index.setdefault((parts[0], parts[1]), set())
        if len(parts) == 3 and parts[2]:
            files.add(parts[2])

    def top_level(self) -> set[str]:
        """The folder names at the top level (under the prefix)."""
        if self._zip is not None:
            return set(self._zip_videos)
        return {entry.name for entry in os.scandir(self.path) if entry.is_dir()}

    def step_into_wrapper(self, video_ids: Sequence[str]) -> str | None:
        """When no video of ``video_ids`` is at the top level but one single folder holds some,
        read from inside that folder; returns its name (``None``: nothing changed)."""
        top = self.top_level()
        if top & set(video_ids) or len(top) != 1:
            return None
        (wrapper,) = top
        if self._zip is not None:
            self.prefix = f"{wrapper}/"
            self._build_index()
        else:
            self.path = self.path / wrapper
        if not self.top_level() & set(video_ids):
            return None
        return wrapper

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> PredictionArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def has_video(self, video_id: str) -> bool:
        if self._zip is not None:
            return video_id in self._zip_videos
        return (self.path / video_id).is_dir()

    def file_names(self, video_id: str, exp_id: str) -> set[str] | None:
        """Names of the files of one expression, or None if its folder is missing."""
        if self._zip is not None:
            return self._index.get((video_id, exp_id))
        exp_dir = self.path / video_id / exp_id
        if not exp_dir.is_dir():
            return None
        return {entry.name for entry in os.scandir(exp_dir)}

    def where(self, video_id: str, exp_id: str, file_name: str) -> str:
        """The file of a member, for messages: ``<zip>: member <name>`` or its path."""
        if self._zip is not None:
            return f"{self.path}: member {self.prefix}{video_id}/{exp_id}/{file_name}"
        return str(self.path / video_id / exp_id / file_name)

    def read(self, video_id: str, exp_id: str, file_name: str) -> bytes:
        """The bytes of a member.

        Raises:
            ArchiveError: a zip member that cannot be read (fails its CRC, truncated, an
                unsupported compression method, encrypted); the message names the archive and
                the member.
        """
        if self._zip is None:
            return (self.path / video_id / exp_id / file_name).read_bytes()
        name = f"{self.prefix}{video_id}/{exp_id}/{file_name}"
        try:
            return self._zip.read(name)
        except NotImplementedError:
            method = self._zip.getinfo(name).compress_type
            reason = (
                f"is compressed with method {method}, which cannot be read here; zip the "
                "masks again stored or with deflate"
            )
        except RuntimeError as err:  # zipfile's words for a member that needs a password
            if "encrypted" not in str(err):
                raise
            reason = "is encrypted; zip the masks again without a password"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            kind = "fails its CRC check" if "CRC" in str(err) else f"is damaged ({err})"
            reason = f"{kind}: the archive is damaged; write or download it again"
        raise ArchiveError(f"{self.where(video_id, exp_id, file_name)} {reason}")


class ArchiveError(ValueError):
    """A prediction archive or member that cannot be read; the message names both."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes, where: str) -> None:
    """Refuse bytes that are not a PNG, or a PNG cut short or failing a chunk's CRC, before a
    decoder sees them (OpenCV and libpng would print their own messages for each).

    Raises:
        ValueError: naming ``where``.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{where} is not a PNG image (it starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # every chunk present and matching its CRC (nothing decoded)
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ValueError(f"{where} is a damaged PNG ({_png_error(err)})") from None


def _png_error(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "its header cannot be read"
    return str(err) or type(err).__name__


def decode_png(data: bytes, where: str) -> np.ndarray:
    """Decode a prediction PNG to ``[H, W] bool`` (grayscale value nonzero = foreground).

    Mode ``L`` PNGs (what archives hold) are decoded by Pillow, whose errors are exceptions;
    others by OpenCV's grayscale decoder, as the official MeViS script reads them (its
    conversion of colour or 16-bit PNGs decides what is nonzero), once Pillow has decoded them
    whole.

    Raises:
        ValueError: ``data`` is not a PNG, or a PNG that does not decode; the message starts
            with ``where``.
    """
    check_png(data, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "L":
                return np.asarray(image) != 0
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for damaged files
        raise ValueError(f"{where} is a PNG that does not decode ({_png_error(err)})") from None
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        raise ValueError(f"{where} is a PNG that does not decode")
    return decoded != 0


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _PlannedExpression:
    """One expression of the split and whether the prediction has it."""

    video_id: str
    exp_id: str
    frame_names: tuple[str, ...]
    anno_ids: tuple[str, ...]
    status: str  # "ok", "missing_video" or "missing_expression"


@dataclass(frozen=True)
class _ExpressionTask:
    """What a worker needs to score one expression (plain, picklable data)."""

    where: str  # "<video_id>/<exp_id>", for messages
    anno_ids: tuple[str, ...]
    gt_rles: dict[str, list]  # the anno_ids' entries of mask_dict.json
    pngs: tuple[bytes | None, ...]  # one per frame; None for a missing file
    missing_frames: tuple[str, ...]
    sources: tuple[str, ...]  # per frame, its file: "<zip>: member <name>" or a path


def _score_task(task: _ExpressionTask, bound_th: float) -> ExpressionScore:
    """Mean J and F of one expression, decoding one frame at a time."""
    size = gt_frame_size(task.gt_rles, task.anno_ids) or _prediction_size(task)
    scores = []
    has_foreground = False
    for frame_idx, png in enumerate(task.pngs):
        where = f"{task.where}, frame {frame_idx}"
        try:
            gt = gt_frame_mask(task.gt_rles, task.anno_ids, frame_idx, *size)
        except ValueError as err:
            raise ValueError(f"{task.where}: {err}") from None
        if png is None:
            pred = np.zeros(size, dtype=bool)
        else:
            pred = decode_png(png, task.sources[frame_idx])
        has_foreground = has_foreground or bool(pred.any())
        if pred.shape != gt.shape:
            raise ValueError(
                f"{where}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                f"ground truth is {size[1]}x{size[0]}"
            )
        scores.append(frame_scores(pred, gt, bound_th))
    j, f = mean_scores(scores)
    return ExpressionScore(j, f, "ok", task.missing_frames, has_foreground)


def _prediction_size(task: _ExpressionTask) -> tuple[int, int]:
    """Frame size from the first prediction PNG, for an expression with no ground-truth RLE."""
    for png, source in zip(task.pngs, task.sources, strict=True):
        if png is not None:
            return decode_png(png, source).shape
    # Neither side has a pixel on any frame: every frame is "both empty", whatever its size.
    return (1, 1)


def _plan(
    split: Split, mask_dict: dict[str, list], archive: PredictionArchive
) -> list[_PlannedExpression]:
    """Every expression of the split, checked against the ground truth and the prediction."""
    plan = []
    for video_id, video in split.videos.items():
        has_video = archive.has_video(video_id)
        if not has_video:
            logger.warning("video %s is not in the prediction: its expressions score 0", video_id)
        for exp_id, expression in video.expressions.items():
            where = f"{video_id}/{exp_id}"
            _check_annotations(mask_dict, expression.anno_ids, video.num_frames, where)
            status = "ok"
            if not has_video:
                status = "missing_video"
            elif archive.file_names(video_id, exp_id) is None:
                logger.warning("expression %s is not in the prediction: it scores 0", where)
                status = "missing_expression"
            plan.append(
                _PlannedExpression(video_id, exp_id, video.frame_names, expression.anno_ids, status)
            )
    return plan


def _check_annotations(
    mask_dict: dict[str, list], anno_ids: Sequence[str], num_frames: int, where: str
) -> None:
    for anno_id in anno_ids:
        rles = mask_dict.get(anno_id)
        if rles is None:
            raise DataError(f"{where}: anno_id {anno_id} is not in {MASK_FILE}")
        if len(rles) != num_frames:
            raise DataError(
                f"{where}: anno_id {anno_id} has {len(rles)} masks in {MASK_FILE}, "
                f"the video has {num_frames} frames"
            )


def _make_task(
    item: _PlannedExpression, archive: PredictionArchive, mask_dict: dict[str, list]
) -> _ExpressionTask:
    """Read one expression's PNGs (a missing one is logged and scored as an empty mask)."""
    where = f"{item.video_id}/{item.exp_id}"
    files = archive.file_names(item.video_id, item.exp_id) or set()
    pngs = tuple(
        archive.read(item.video_id, item.exp_id, name + PNG_SUFFIX)
        if name + PNG_SUFFIX in files
        else None
        for name in item.frame_names
    )
    missing = tuple(name for name, png in zip(item.frame_names, pngs, strict=True) if png is None)
    if missing:
        shown = ", ".join(f"{where}/{name}{PNG_SUFFIX}" for name in missing[:_MAX_NAMED_FRAMES])
        more = len(missing) - _MAX_NAMED_FRAMES
        suffix = f" and {more} more" if more > 0 else ""
        logger.warning("missing prediction frames, scored as empty masks: %s%s", shown, suffix)
    return _ExpressionTask(
        where=where,
        anno_ids=item.anno_ids,
        gt_rles={anno_id: mask_dict[anno_id] for anno_id in item.anno_ids},
        pngs=pngs,
        missing_frames=missing,
        sources=tuple(
            archive.where(item.video_id, item.exp_id, name + PNG_SUFFIX)
            for name in item.frame_names
        ),
    )


def evaluate_archive(
    pred: str | Path,
    data_root: str | Path,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> EvaluationResult:
    """Score a prediction archive with the official MeViS J&F.

    Args:
        pred: zip file or folder holding ``<video_id>/<exp_id>/<frame_name>.png``.
        data_root: split folder with ``meta_expressions.json`` and ``mask_dict.json``.
        jobs: worker processes (joblib ``n_jobs``: -1 = all cores, 1 = in this process).
        bound_th: boundary tolerance of F (fraction of the image diagonal).
        progress: show a tqdm progress bar over expressions.
    Raises:
        FileNotFoundError: ``pred`` is missing.
        DataError: ``meta_expressions.json`` or ``mask_dict.json`` is missing or inconsistent,
            or no video of the split is in ``pred`` (a wrapper folder is stepped into).
        ValueError: an unreadable or mis-sized prediction PNG (the message names it).
    """
    split = MevisSplit(data_root)
    return evaluate_mevis(pred, split, jobs=jobs, bound_th=bound_th, progress=progress)


def evaluate_mevis(
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> EvaluationResult:
    """:func:`evaluate_archive` on a split already read (a layout with ``mask_dict.json``)."""
    split, mask_dict = _mask_dict(split)
    with PredictionArchive(pred) as archive:
        wrapper = archive.step_into_wrapper(split.video_ids)
        if wrapper is not None:
            logger.warning(
                "%s keeps its masks in a wrapper folder %r: evaluating inside it (the MeViS "
                "server wants <video>/<exp_id>/<frame>.png at the top level)",
                pred,
                wrapper,
            )
        if not any(archive.has_video(video_id) for video_id in split.video_ids):
            raise DataError(
                f"no video of the split {split.root} is in {pred} (found "
                f"{sorted(archive.top_level())[:5]}): is --data-root the split these "
                "predictions were made for?"
            )
        plan = _plan(split, mask_dict, archive)
        todo = [item for item in plan if item.status == "ok"]
        tasks = (
            delayed(_score_task)(_make_task(item, archive, mask_dict), bound_th) for item in todo
        )
        results = Parallel(n_jobs=jobs, return_as="generator")(tasks)
        bar = progress_bar(results, total=len(todo), desc="J&F", unit="exp", disable=not progress)
        computed = {
            (item.video_id, item.exp_id): score for item, score in zip(todo, bar, strict=True)
        }
    scores = {
        (item.video_id, item.exp_id): computed.get(
            (item.video_id, item.exp_id), ExpressionScore(0.0, 0.0, item.status)
        )
        for item in plan
    }
    j, f = mean_scores([(score.j, score.f) for score in scores.values()])
    return EvaluationResult(j=j, f=f, jf=(j + f) / 2, per_expression=scores)


def evaluate_mevis_v2(
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> MevisV2Result:
    """MeViS v2: :func:`evaluate_mevis` plus the no-target and target accuracies (see the module
    docstring); an expression with an empty ``anno_id`` list has no target."""
    scores = evaluate_mevis(pred, split, jobs=jobs, bound_th=bound_th, progress=progress)
    targets = {
        (video_id, exp_id): bool(expression.anno_ids)
        for video_id, video in split.videos.items()
        for exp_id, expression in video.expressions.items()
    }
    return MevisV2Result(scores=scores, targets=targets)


def _evaluate_davis17(pred: str | Path, split: Split, **kwargs: Any) -> BenchmarkResult:
    from rvos.davis import evaluate_davis17  # rvos.davis imports this module

    return evaluate_davis17(pred, split, **kwargs)


# (pred, split, *, jobs, bound_th, progress) -> result
Metric = Callable[..., BenchmarkResult]
# data.metric -> metric. Add an entry for another benchmark's metric.
METRICS: dict[str, Metric] = {
    "mevis": evaluate_mevis,
    "mevis_v2": evaluate_mevis_v2,
    "davis17": _evaluate_davis17,
}


def get_metric(name: str) -> Metric:
    """The metric registered as ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(sorted(METRICS))})") from None


def evaluate(
    metric: str,
    pred: str | Path,
    split: Split,
    *,
    jobs: int = -1,
    bound_th: float = DEFAULT_BOUND_TH,
    progress: bool = True,
) -> BenchmarkResult:
    """Score ``pred`` on ``split`` with the metric registered as ``metric``."""
    return get_metric(metric)(pred, split, jobs=jobs, bound_th=bound_th, progress=progress)


def format_table(result: BenchmarkResult) -> str:
    """The score table of a result in percent with two decimals (MeViS: J, F and J&F)."""
    return result.format_table()


def format_summary(summary: Mapping[str, float]) -> str:
    """Two lines: the score names and their values in percent with two decimals."""
    header = " ".join(f"{name:>7}" for name in summary)
    values = " ".join(f"{100 * value:7.2f}" for value in summary.values())
    return f"{header}\n{values}"
