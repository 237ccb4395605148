"""Run-length masks and logit upsampling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos import masks as masks_module
from rvos.masks import (
    RunLengthBuilder,
    RunLengthMasks,
    bounding_box_area,
    iter_frames,
    upsample_mask_logits,
)


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 9, 13)) > 0.5
    masks[0, 0] = True  # starts with foreground: a zero-length first run
    masks[0, 1] = False  # all background: a single run
    return masks


def test_roundtrip(stack):
    rle = RunLengthMasks.encode(stack)
    np.testing.assert_array_equal(rle.decode(), stack)
    assert rle.counts.dtype == np.uint32 and rle.offsets[-1] == len(rle.counts)


def test_known_runs():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    rle = RunLengthMasks.encode(mask[None])
    assert rle.counts.tolist() == [1, 3, 2]
    full = RunLengthMasks.encode(np.ones((1, 2, 2), dtype=bool))
    assert full.counts.tolist() == [0, 4]


def test_select_and_decode_subsets(stack):
    rle = RunLengthMasks.encode(stack)
    np.testing.assert_array_equal(rle.select(np.array([3, 1]), axis=1).decode(), stack[:, [3, 1]])
    np.testing.assert_array_equal(rle.select(2).decode(), stack[2])
    np.testing.assert_array_equal(rle.decode([5, 0]), stack.reshape(-1, 9, 13)[[5, 0]])
    assert rle.select(np.array([], dtype=int), axis=1).decode().shape == (3, 0, 9, 13)


def test_any_foreground(stack):
    rle = RunLengthMasks.encode(stack)
    np.testing.assert_array_equal(rle.any_foreground(), stack.any(axis=(-1, -2)))


def test_concatenate(stack):
    parts = [RunLengthMasks.encode(stack[:1]), RunLengthMasks.encode(stack[1:])]
    np.testing.assert_array_equal(RunLengthMasks.concatenate(parts).decode(), stack)


def test_corrupt_runs_are_detected(stack):
    rle = RunLengthMasks.encode(stack)
    bad = RunLengthMasks(shape=rle.shape, counts=rle.counts + 1, offsets=rle.offsets)
    with pytest.raises(ValueError, match="corrupt"):
        bad.decode()


def test_upsample_matches_torch_interpolate():
    logits = torch.randn(5, 2, 6, 7)
    expected = F.interpolate(logits, size=(23, 29), mode="bilinear", align_corners=False) > 0
    got = upsample_mask_logits(logits.numpy(), (23, 29), chunk=2)
    np.testing.assert_array_equal(got, expected.numpy())


def _same_runs(got: RunLengthMasks, expected: RunLengthMasks) -> None:
    """Equal shape, runs and dtypes: the records written from either are byte-identical."""
    assert got.shape == expected.shape
    assert got.counts.dtype == expected.counts.dtype == np.uint32
    assert got.offsets.dtype == expected.offsets.dtype == np.int64
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.offsets, expected.offsets)


def random_stacks(seed: int, count: int):
    """``count`` random ``[T, K, H, W]`` bool stacks: noise of random density, single rows and
    columns, full and empty masks, ``K = 0``, one-pixel frames."""
    rng = np.random.default_rng(seed)
    for case in range(count):
        shape = tuple(int(s) for s in rng.integers(1, 9, size=4))
        if case % 11 == 0:
            shape = (shape[0], 0, *shape[2:])
        masks = rng.random(shape) < rng.random()
        if case % 5 == 1:
            masks[...] = False
        if case % 7 == 2:
            masks[...] = True
        if case % 3 == 0 and shape[1]:
            masks[:, 0] = False
            masks[:, 0, rng.integers(shape[2]), :] = True  # one row: box area 0
        yield masks


def test_union_over_objects_equals_the_dense_union():
    for masks in random_stacks(1, 300):
        union = RunLengthMasks.encode(masks).union()
        _same_runs(union, RunLengthMasks.encode(masks.any(axis=1)))


def test_union_with_equals_the_dense_or():
    rng = np.random.default_rng(2)
    for masks in random_stacks(3, 200):
        other = rng.random(masks.shape) < rng.random()
        got = RunLengthMasks.encode(masks).union_with(RunLengthMasks.encode(other))
        _same_runs(got, RunLengthMasks.encode(masks | other))
    with pytest.raises(ValueError, match="shapes"):
        RunLengthMasks.empty((2, 3, 4)).union_with(RunLengthMasks.empty((3, 3, 4)))


def test_bounding_box_areas_equal_the_dense_ones():
    for masks in random_stacks(4, 300):
        flat = masks.reshape(-1, *masks.shape[-2:])
        expected = np.array([bounding_box_area(m) for m in flat], dtype=np.int64)
        got = RunLengthMasks.encode(masks).bounding_box_areas()
        assert got.dtype == np.int64 and got.shape == masks.shape[:-2]
        np.testing.assert_array_equal(got.reshape(-1), expected)


def test_a_run_over_two_rows_spans_every_column():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 3:] = True
    mask[2, :1] = True  # one run from (1, 3) to (2, 0)
    assert RunLengthMasks.encode(mask[None]).bounding_box_areas().tolist() == [1 * 4]


def test_run_operations_detect_corrupt_runs(stack):
    rle = RunLengthMasks.encode(stack)
    bad = RunLengthMasks(shape=rle.shape, counts=rle.counts + 1, offsets=rle.offsets)
    for operation in (bad.union, bad.bounding_box_areas, lambda: bad.union_with(bad)):
        with pytest.raises(ValueError, match="corrupt"):
            operation()


def test_builder_takes_frames_in_any_order_and_a_later_frame_replaces():
    rng = np.random.default_rng(5)
    masks = rng.random((6, 2, 7, 9)) < 0.4
    builder = RunLengthBuilder(6, (2, 7, 9))
    builder.put(3, ~masks[3])  # replaced below
    for frame_idx in rng.permutation(6):
        builder.put(int(frame_idx), masks[frame_idx])
    _same_runs(builder.build(), RunLengthMasks.encode(masks))
    with pytest.raises(ValueError, match="shape"):
        builder.put(0, masks[0, :1])


def test_builder_names_the_frames_never_put():
    builder = RunLengthBuilder(4, (1, 3, 3))
    builder.put(1, np.ones((1, 3, 3), dtype=bool))
    np.testing.assert_array_equal(builder.missing(), [0, 2, 3])
    with pytest.raises(ValueError, match=r"\[0, 2, 3\]"):
        builder.build()


def test_frames_decode_one_at_a_time(stack):
    rle = RunLengthMasks.encode(stack)
    for index, (frame, dense) in enumerate(zip(iter_frames(rle), stack, strict=True)):
        np.testing.assert_array_equal(frame, dense)
        np.testing.assert_array_equal(rle.frame(index), dense)
    np.testing.assert_array_equal(rle.frame(-1), stack[-1])
    with pytest.raises(IndexError):
        rle.frame(len(stack))
    assert [f.shape for f in iter_frames(stack[:, 0])] == [stack.shape[2:]] * len(stack)


def test_empty_stack_and_array_view():
    empty = RunLengthMasks.empty((3, 0, 4, 5))
    assert empty.decode().shape == (3, 0, 4, 5) and not empty.any()
    _same_runs(RunLengthMasks.empty((2, 4, 5)), RunLengthMasks.encode(np.zeros((2, 4, 5), bool)))
    _same_runs(empty.union(), RunLengthMasks.empty((3, 4, 5)))
    masks = np.eye(4, dtype=bool)[None]
    rle = RunLengthMasks.encode(masks)
    assert rle.any() and np.array_equal(np.asarray(rle), masks)


def test_run_operations_work_through_long_stacks_piece_by_piece(monkeypatch):
    """Pieces of a few frames (as a long video's) give the runs of the whole stack at once."""
    monkeypatch.setattr(masks_module, "RUN_CHUNK_FRAMES", 3)
    rng = np.random.default_rng(6)
    masks = rng.random((10, 2, 5, 7)) < 0.3
    other = rng.random((10, 5, 7)) < 0.3
    rle = RunLengthMasks.encode(masks)
    _same_runs(rle.union(), RunLengthMasks.encode(masks.any(axis=1)))
    _same_runs(
        rle.union().union_with(RunLengthMasks.encode(other)),
        RunLengthMasks.encode(masks.any(axis=1) | other),
    )
    expected = [[bounding_box_area(m) for m in frame] for frame in masks]
    np.testing.assert_array_equal(rle.bounding_box_areas(), expected)
