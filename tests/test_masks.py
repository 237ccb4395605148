"""Run-length masks and logit upsampling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos.masks import RunLengthMasks, upsample_mask_logits


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
