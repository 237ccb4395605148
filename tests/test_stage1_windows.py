"""Stage 1 in overlapping windows: layout, query stitching, records, and the options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from referdino_plus.config import ConfigError, load_config
from referdino_plus.pipeline import stage_fingerprints
from rvos.masks import RunLengthMasks
from rvos.proposals import ANSWER_RULES, proposals_from_query_masks
from stage1_referdino.options import Stage1Window
from stage1_referdino.postprocess import proposals_from_outputs, query_masks
from stage1_referdino.windows import (
    QueryStitcher,
    Window,
    WindowOutputs,
    box_iou,
    clip_windows,
    match_queries,
    shared_frames,
    window_spans,
)

# -- layout -----------------------------------------------------------------------------------


def test_a_clip_no_longer_than_a_window_is_one_pass():
    assert window_spans(40, None, 4) == [Window(0, 40, 0, 40)]
    assert window_spans(40, 40, 4) == [Window(0, 40, 0, 40)]
    assert window_spans(3, 16, 4) == [Window(0, 3, 0, 3)]


def test_windows_of_the_fixture_clip():
    """40 frames, windows of 16 sharing 4: each shared stretch split at its middle."""
    assert window_spans(40, 16, 4) == [
        Window(0, 16, 0, 14),
        Window(12, 28, 14, 26),
        Window(24, 40, 26, 40),
    ]


@pytest.mark.parametrize("frames", [2, 3, 5, 16, 36])
def test_windows_are_full_length_overlap_and_own_every_frame_once(frames):
    for num_frames in range(frames + 1, frames * 6):
        for overlap in range(1, frames):
            windows = window_spans(num_frames, frames, overlap)
            assert windows[0].start == 0 and windows[-1].stop == num_frames
            assert all(w.num_frames == frames for w in windows)
            owned = [t for w in windows for t in range(w.own_start, w.own_stop)]
            assert owned == list(range(num_frames))
            for w in windows:
                assert w.start <= w.own_start < w.own_stop <= w.stop
            for before, after in zip(windows, windows[1:], strict=False):
                shared = before.stop - after.start
                assert shared >= overlap
                # the earlier window gives the first half of the shared frames, rounded down
                assert before.own_stop - after.start == shared // 2
            # the fewest windows that share `overlap` frames
            fewer = -(-(num_frames - overlap) // (frames - overlap)) - 1
            assert len(windows) == fewer + 1


def test_overlap_out_of_range_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        window_spans(40, 16, 16)
    with pytest.raises(ValueError, match="overlap"):
        window_spans(40, 16, 0)


# -- stitching ----------------------------------------------------------------------------------


def synthetic_video(num_frames: int, num_queries: int, size=(12, 16), seed=0):
    """Queries that are distinct moving rectangles: ``(scores [T, Q], boxes [T, Q, 4],
    logits [T, Q, h, w])``; a logit is +1 inside its rectangle, -1 outside."""
    rng = np.random.default_rng(seed)
    height, width = size
    logits = -np.ones((num_frames, num_queries, height, width), dtype=np.float32)
    boxes = np.zeros((num_frames, num_queries, 4), dtype=np.float32)
    for q in range(num_queries):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 6)
        h, w = rng.integers(2, 5), rng.integers(2, 7)
        for t in range(num_frames):
            row, col = (top + t // 3) % (height - h), (left + t) % (width - w)
            logits[t, q, row : row + h, col : col + w] = 1.0
            boxes[t, q] = ((col + w / 2) / width, (row + h / 2) / height, w / width, h / height)
    scores = rng.random((num_frames, num_queries), dtype=np.float32)
    return scores, boxes, logits


def window_outputs(video, window: Window, order: np.ndarray, *, tensor: bool) -> WindowOutputs:
    """The window's slice of ``video`` with its queries in ``order`` (column i = query
    ``order[i]``), as the model would return them."""
    scores, boxes, logits = (a[window.start : window.stop][:, order] for a in video)
    return WindowOutputs(scores, boxes, torch.from_numpy(logits.copy()) if tensor else logits)


def stitch(windows, outputs):
    stitcher = QueryStitcher(windows)
    parts = [stitcher.add(o) for o in outputs]
    logits = [np.asarray(p.mask_logits) for p in parts]
    return (
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.boxes for p in parts]),
        np.concatenate(logits),
    )


@pytest.mark.parametrize("tensor", [False, True])
def test_permuted_queries_are_recovered_exactly(tensor):
    """Each window returns the same queries in another order: the stitched outputs are the
    video's, in the first window's order."""
    video = synthetic_video(40, 6)
    windows = window_spans(40, 11, 3)
    rng = np.random.default_rng(1)
    orders = [np.arange(6)] + [rng.permutation(6) for _ in windows[1:]]
    outputs = [
        window_outputs(video, w, o, tensor=tensor) for w, o in zip(windows, orders, strict=True)
    ]
    scores, boxes, logits = stitch(windows, outputs)
    for stitched, original in zip((scores, boxes, logits), video, strict=True):
        np.testing.assert_array_equal(stitched, original)


def test_the_first_window_names_the_queries():
    video = synthetic_video(30, 4)
    windows = window_spans(30, 12, 4)
    first = np.array([2, 0, 3, 1])
    rng = np.random.default_rng(2)
    orders = [first] + [rng.permutation(4) for _ in windows[1:]]
    scores, _, logits = stitch(
        windows,
        [window_outputs(video, w, o, tensor=False) for w, o in zip(windows, orders, strict=True)],
    )
    np.testing.assert_array_equal(scores, video[0][:, first])
    np.testing.assert_array_equal(logits, video[2][:, first])


def test_each_frame_comes_from_the_window_that_owns_it():
    """Windows that disagree on the shared frames: a frame's values are its owner's."""
    num_frames, num_queries = 30, 3
    video = synthetic_video(num_frames, num_queries)
    windows = window_spans(num_frames, 10, 4)
    outputs = []
    for index, w in enumerate(windows):
        out = window_outputs(video, w, np.arange(num_queries), tensor=False)
        out.scores = np.full_like(out.scores, index)  # which window gave the value
        outputs.append(out)
    scores, _, _ = stitch(windows, outputs)
    owner = np.concatenate([np.full(w.own_stop - w.own_start, i) for i, w in enumerate(windows)])
    np.testing.assert_array_equal(scores[:, 0], owner)
    for index, w in enumerate(windows):  # the owned frames are the middle of the shared ones
        if index:
            shared = windows[index - 1].stop - w.start
            assert w.own_start == w.start + shared // 2


def test_queries_with_empty_masks_are_matched_by_their_boxes():
    rng = np.random.default_rng(4)
    boxes = np.stack(
        [np.array([[0.2, 0.2, 0.1, 0.1], [0.7, 0.3, 0.2, 0.1], [0.5, 0.8, 0.3, 0.2]])] * 3
    ).astype(np.float32)
    empty = np.zeros((3, 3, 4, 4), dtype=bool)
    order = rng.permutation(3)
    found = match_queries(empty, boxes, empty[:, order], boxes[:, order])
    np.testing.assert_array_equal(order[found], np.arange(3))


def test_mask_iou_decides_over_boxes():
    """Two running queries with the same box: the masks tell them apart."""
    masks = np.zeros((2, 2, 4, 4), dtype=bool)
    masks[:, 0, :2] = True
    masks[:, 1, 2:] = True
    boxes = np.full((2, 2, 4), 0.5, dtype=np.float32)
    assert match_queries(masks, boxes, masks[:, ::-1], boxes).tolist() == [1, 0]


def test_box_iou():
    a = np.array([[0.5, 0.5, 0.2, 0.2]])
    b = np.array([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.0, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 0.1 * 0.2 / (0.08 - 0.02), 0.0]])


def test_windows_with_another_query_count_are_refused():
    masks, boxes = np.zeros((2, 3, 4, 4), dtype=bool), np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="4 queries, the one before it 3"):
        match_queries(masks, boxes, np.zeros((2, 4, 4, 4), dtype=bool), np.zeros((2, 4, 4)))


def test_outputs_of_the_wrong_length_are_refused():
    video = synthetic_video(20, 2)
    windows = window_spans(20, 8, 2)
    stitcher = QueryStitcher(windows)
    with pytest.raises(ValueError, match="window 0 has 8 frames"):
        stitcher.add(window_outputs(video, Window(0, 7, 0, 7), np.arange(2), tensor=False))


@pytest.mark.parametrize("answer", sorted(ANSWER_RULES))
def test_records_from_encoded_masks_equal_records_from_logits(answer):
    """:func:`proposals_from_query_masks` on :func:`query_masks` is
    :func:`proposals_from_outputs`, run for run."""
    scores, boxes, logits = synthetic_video(13, 5, seed=5)
    frame_size = (23, 35)
    for top_k in (None, 2):
        direct = proposals_from_outputs(
            scores, boxes, logits, frame_size, top_k=top_k, obj_threshold=0.5, answer=answer
        )
        parts = [query_masks(logits[s : s + 4], frame_size) for s in range(0, 13, 4)]
        made = proposals_from_query_masks(
            scores,
            boxes,
            RunLengthMasks.concatenate(parts),
            top_k=top_k,
            obj_threshold=0.5,
            answer=answer,
            frames_per_chunk=3,
        )
        assert_same_proposals(made, direct)


def assert_same_proposals(a, b) -> None:
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.query_ids, b.query_ids)
    for x, y in ((a.masks, b.masks), (a.answer, b.answer)):
        assert x.shape == y.shape
        np.testing.assert_array_equal(x.counts, y.counts)
        np.testing.assert_array_equal(x.offsets, y.offsets)


# -- options ---------------------------------------------------------------------------------------


def test_window_options_and_their_ranges():
    cfg = load_config([])
    assert cfg.stage1.window.frames is None  # the pipeline runs one pass
    assert clip_windows(10**4, cfg.stage1.window) == [Window(0, 10**4, 0, 10**4)]
    with pytest.raises(ConfigError, match="stage1.window.frames=1"):
        load_config(["stage1.window.frames=1"])
    with pytest.raises(ConfigError, match="stage1.window.overlap=0.6"):
        load_config(["stage1.window.frames=16", "stage1.window.overlap=0.6"])
    with pytest.raises(ConfigError, match="stage1.window.overlap=0"):
        load_config(["stage1.window.frames=16", "stage1.window.overlap=0"])


@pytest.mark.parametrize("frames", range(2, 80))
def test_any_allowed_overlap_shares_at_least_one_frame_and_leaves_one(frames):
    for overlap in (1e-3, 0.1, 0.25, 1 / 3, 0.5):
        assert 1 <= shared_frames(frames, overlap) <= frames - 1
        options = Stage1Window(frames=frames, overlap=overlap)
        windows = clip_windows(5 * frames, options)
        assert windows == window_spans(5 * frames, frames, shared_frames(frames, overlap))
    assert shared_frames(16, 0.25) == 4 and shared_frames(72, 0.25) == 18


def test_demo_and_app_run_windows_unless_told_otherwise():
    from referdino_plus.segmenter import load_demo_config

    cfg = load_demo_config([])
    assert cfg.stage1.window.frames == cfg.demo.window_frames is not None
    assert load_demo_config(["demo.window_frames=24"]).stage1.window.frames == 24
    assert load_demo_config(["stage1.window.frames=null"]).stage1.window.frames is None
    assert load_demo_config(["stage1.window.frames=30"]).stage1.window.frames == 30


def test_windows_change_the_fingerprint_one_pass_does_not():
    base = stage_fingerprints(load_config([]))
    assert stage_fingerprints(load_config(["stage1.window.overlap=0.1"])) == base
    windowed = stage_fingerprints(load_config(["stage1.window.frames=16"]))
    assert all(windowed[stage] != base[stage] for stage in base)
    other = stage_fingerprints(
        load_config(["stage1.window.frames=16", "stage1.window.overlap=0.1"])
    )
    assert other[1] != windowed[1]


def test_stage1_progress_in_words():
    from referdino_plus.segmenter import stage1_detail
    from stage1_referdino.runner import Stage1Progress

    one = Stage1Progress(Window(0, 40, 0, 40), 0, 1, 1, 2, 40)
    assert stage1_detail(one) == "sentence 1/2" and one.frames_done == 20
    starting = Stage1Progress(Window(12, 28, 14, 26), 1, 3, 0, 2, 40)
    assert stage1_detail(starting) == "window 2/3 (frames 13-28), encoding 16 frames"
    assert starting.frames_done == 14
    done = Stage1Progress(Window(24, 40, 26, 40), 2, 3, 2, 2, 40)
    assert done.frames_done == 40


# -- the tiny model -----------------------------------------------------------------------------

TINY = "referdino_tiny"
SENTENCES = {"0": "the child sitting on the bed", "1": "the white cup on the table."}
NUM_FRAMES, FRAME_SIZE = 20, (54, 96)  # (H, W): small masks keep the test fast


class ReadLog(list):
    """Frames that remember which indices were read."""

    def __init__(self, frames, log):
        super().__init__(frames)
        self.log = log

    def __getitem__(self, index):
        self.log.append(index)
        return super().__getitem__(index)


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path):
    from stage1_referdino.runner import build_stage1_model

    folder = fixtures_dir / TINY
    meta = json.loads((folder / "fixture.json").read_text(encoding="utf-8"))
    names = meta["frame_names"][:NUM_FRAMES]
    frames = []
    for name in names:
        with Image.open(folder / "frames" / f"{name}.jpg") as image:
            frames.append(image.convert("RGB").resize(FRAME_SIZE[::-1]))
    cfg = load_config(
        [
            f"stage1.model={folder / 'model.yaml'}",
            f"stage1.checkpoint={folder / 'referdino_checkpoint.pth'}",
            "stage1.short_side=64",
        ]
    )
    return build_stage1_model(cfg.stage1, "cpu"), frames, names, cfg.stage1


def with_window(options, frames, overlap=0.375):
    return dataclasses.replace(
        options, window=dataclasses.replace(options.window, frames=frames, overlap=overlap)
    )


@pytest.mark.slow
def test_one_window_of_every_frame_is_one_pass_bit_for_bit(tiny):
    from stage1_referdino.runner import stage1_record, windowed_record

    model, frames, names, options = tiny
    one_pass = stage1_record(model, frames, SENTENCES, options, video_id="v", frame_names=names)
    windowed = windowed_record(
        model,
        frames,
        SENTENCES,
        options,
        windows=[Window(0, NUM_FRAMES, 0, NUM_FRAMES)],
        video_id="v",
        frame_names=names,
        legacy=None,
        progress=False,
        answer="threshold_or_top1",
        video=None,
        on_progress=None,
    )
    wide = stage1_record(
        model, frames, SENTENCES, with_window(options, NUM_FRAMES), video_id="v", frame_names=names
    )
    for exp_id in SENTENCES:
        assert_same_proposals(windowed.expressions[exp_id], one_pass.expressions[exp_id])
        assert_same_proposals(wide.expressions[exp_id], one_pass.expressions[exp_id])


@pytest.mark.slow
def test_a_windowed_run_reads_window_by_window_and_stitches_its_queries(tiny, monkeypatch):
    from stage1_referdino import runner

    model, frames, names, options = tiny
    options = with_window(options, 8)  # 3 frames shared
    windows = window_spans(NUM_FRAMES, 8, 3)
    assert len(windows) == 4
    reads: list[int] = []
    encoded: list[int] = []
    encode = model.encode_video
    monkeypatch.setattr(
        model, "encode_video", lambda v, **kw: encoded.append(len(v)) or encode(v, **kw)
    )
    events = []
    record = runner.stage1_record(
        model,
        ReadLog(frames, reads),
        SENTENCES,
        options,
        video_id="v",
        frame_names=names,
        on_progress=events.append,
    )
    # each window's frames read once, in order, and encoded once for both sentences
    assert reads == [t for w in windows for t in range(w.start, w.stop)]
    assert encoded == [8] * len(windows)
    done = [e.frames_done for e in events]
    assert done == sorted(done) and done[-1] == NUM_FRAMES and len(events) == 4 * 3

    # the record: [T, K] scores, [T, K, 4] boxes, [T, K, H, W] masks of the stitched queries
    raw = [
        {
            e: o
            for e, o in runner.run_expressions(
                model, frames[w.start : w.stop], SENTENCES, short_side=64
            )
        }
        for w in windows
    ]
    for exp_id in SENTENCES:
        proposals = record.expressions[exp_id]
        num_queries = raw[0][exp_id].scores.shape[1]
        assert proposals.scores.shape == (NUM_FRAMES, num_queries)
        assert proposals.boxes.shape == (NUM_FRAMES, num_queries, 4)
        assert proposals.masks.shape == (NUM_FRAMES, num_queries, *FRAME_SIZE)
        assert proposals.answer.shape == (NUM_FRAMES, *FRAME_SIZE)
        # every owned frame holds its window's outputs, the queries in the matched order
        stitcher = QueryStitcher(windows)
        for w, outputs in zip(windows, raw, strict=True):
            out = outputs[exp_id]
            owned = stitcher.add(WindowOutputs(out.scores, out.boxes, out.mask_logits))
            frames_owned = slice(w.own_start, w.own_stop)
            np.testing.assert_array_equal(proposals.boxes[frames_owned], owned.boxes)
            np.testing.assert_array_equal(proposals.scores[frames_owned], owned.scores)
            masks = query_masks(owned.mask_logits, FRAME_SIZE)
            np.testing.assert_array_equal(proposals.masks.decode()[frames_owned], masks.decode())
