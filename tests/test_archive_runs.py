"""Archives written from run-length records, one frame decoded at a time: the same bytes as from
whole decoded stacks, and a long video is never held at frame size."""

from __future__ import annotations

import functools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from referdino_plus.archives import archive_masks
from rvos import intermediates as im
from rvos.archive import (
    AnnotatorLabelPngs,
    ExpressionPngs,
    build_archive_writer,
    encode_png,
    merge_labels,
    write_archive,
)
from rvos.davis import encode_label_png
from rvos.masks import RunLengthMasks
from rvos.splits import Expression, Video

SIZE = (18, 24)
VIDEOS = {"vidA": 5, "vidB": 3}
EXP_IDS = ("0", "1", "2")
FINGERPRINT = "test"


def random_stack(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Noise of random density; the first frame empty, the third full."""
    masks = rng.random(shape) < rng.random()
    masks[0] = False
    if shape[0] > 2:
        masks[2] = True
    return masks


def write_records(work_dir: Path) -> None:
    """Stage 1-3 records of :data:`VIDEOS`, random masks (one expression keeps no query)."""
    rng = np.random.default_rng(0)
    for video_id, num_frames in VIDEOS.items():
        names = [f"{t:05d}" for t in range(num_frames)]
        stage1 = im.Stage1Video(video_id, names, *SIZE)
        stage2 = im.Stage2Video(video_id, names, *SIZE)
        stage3 = im.Stage3Video(video_id, names, *SIZE)
        for exp_id in EXP_IDS:
            kept = 0 if exp_id == "2" else 1 + int(exp_id)
            proposals = random_stack(rng, (num_frames, 3, *SIZE))
            stage1.expressions[exp_id] = im.ExpressionProposals(
                scores=rng.random((num_frames, 3)).astype(np.float32),
                boxes=rng.random((num_frames, 3, 4)).astype(np.float32),
                masks=RunLengthMasks.encode(proposals),
                query_ids=np.arange(3, dtype=np.int64),
                answer=RunLengthMasks.encode(proposals[:, 0]),
            )
            stage2.expressions[exp_id] = im.ExpressionRefinement(
                kept_columns=np.arange(kept, dtype=np.int64),
                prompt_frames=np.zeros(kept, dtype=np.int64),
                sam2_masks=RunLengthMasks.encode(random_stack(rng, (num_frames, kept, *SIZE))),
                stage1_union=RunLengthMasks.encode(proposals[:, :kept].any(axis=1)),
            )
            stage3.expressions[exp_id] = im.ExpressionFusion(
                masks=RunLengthMasks.encode(random_stack(rng, (num_frames, *SIZE))),
                multi_object=False,
                frames_sam2_smaller=0,
                frames_both_nonempty=0,
            )
        im.save_stage1(im.stage_path(work_dir, 1, video_id), stage1, fingerprint=FINGERPRINT)
        im.save_stage2(im.stage_path(work_dir, 2, video_id), stage2, fingerprint=FINGERPRINT)
        im.save_stage3(im.stage_path(work_dir, 3, video_id), stage3, fingerprint=FINGERPRINT)


def decoded_stacks(work_dir: Path, stage: int, video_id: str):
    """The archive's masks as whole ``[T, H, W] bool`` stacks, decoded as they used to be."""
    path = im.stage_path(work_dir, stage, video_id)
    if stage == 1:
        video = im.load_stage1(path)
        return video.frame_names, {e: p.answer.decode() for e, p in video.expressions.items()}
    if stage == 2:
        video = im.load_stage2(path)
        return video.frame_names, {
            e: r.sam2_masks.decode().any(axis=1) for e, r in video.expressions.items()
        }
    video = im.load_stage3(path)
    return video.frame_names, {e: f.masks.decode() for e, f in video.expressions.items()}


def davis_videos() -> dict[str, Video]:
    """:data:`VIDEOS` with expressions ``0`` and ``2`` by annotator 0, ``1`` by annotator 1."""
    return {
        video_id: Video(
            video_id,
            tuple(f"{t:05d}" for t in range(num_frames)),
            {
                e: Expression(e, f"sentence {e}", annotator=int(e) % 2, obj_idx=int(e) // 2)
                for e in EXP_IDS
            },
        )
        for video_id, num_frames in VIDEOS.items()
    }


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("work")
    write_records(folder)
    return folder


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("layout", ["mevis", "ref_youtube_vos", "ref_davis17"])
def test_archives_from_runs_equal_those_from_decoded_stacks(tmp_path, work_dir, stage, layout):
    writer = build_archive_writer(layout, davis_videos())
    expected = {v: {e: [f"{t:05d}" for t in range(n)] for e in EXP_IDS} for v, n in VIDEOS.items()}
    paths = []
    for name, load in (("runs", archive_masks), ("stacks", decoded_stacks)):
        masks = load(work_dir, stage, "vidA")[1]
        assert all(isinstance(m, RunLengthMasks) == (name == "runs") for m in masks.values())
        paths.append(tmp_path / f"{name}.zip")
        write_archive(
            paths[-1], functools.partial(load, work_dir, stage), expected, jobs=1, writer=writer
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_members_are_the_frames_of_the_whole_stacks(work_dir):
    """Each member's bytes: the PNG of that frame of the whole decoded stack (the annotators'
    labels merged over whole stacks)."""
    frame_names, stacks = decoded_stacks(work_dir, 2, "vidA")
    _, runs = archive_masks(work_dir, 2, "vidA")
    entries = dict(ExpressionPngs(prefix="").video_entries("vidA", frame_names, runs, 1))
    for exp_id, stack in stacks.items():
        for frame_name, mask in zip(frame_names, stack, strict=True):
            assert entries[f"vidA/{exp_id}/{frame_name}.png"] == encode_png(mask, 1)
    writer = AnnotatorLabelPngs.for_videos(davis_videos())
    entries = dict(writer.video_entries("vidA", frame_names, runs, 1))
    labels = merge_labels([stacks["0"], stacks["2"]])  # annotator 0, in obj_idx order
    for frame_name, frame_labels in zip(frame_names, labels, strict=True):
        assert entries[f"anno_0/vidA/{frame_name}.png"] == encode_label_png(frame_labels, 1)


def test_a_long_video_is_encoded_one_frame_at_a_time():
    """100 frames of 1280x720 become PNGs holding about one frame at a time: the traced peak
    stays far below the decoded stack (88 MiB)."""
    num_frames, (height, width) = 100, (720, 1280)
    frame = np.zeros((1, height, width), dtype=bool)
    frame[0, 100:400, 300:700] = True
    one = RunLengthMasks.encode(frame)
    stack = RunLengthMasks.concatenate([one] * num_frames)
    names = [f"{t:05d}" for t in range(num_frames)]
    tracemalloc.start()
    try:
        entries = ExpressionPngs(prefix="").video_entries("long", names, {"0": stack}, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(entries) == num_frames and entries[0][1] == encode_png(frame[0], 1)
    assert peak < 8 * height * width, f"peak {peak / 2**20:.1f} MiB"
