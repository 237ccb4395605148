"""Stage-1 mask post-processing: the device way (upsample, threshold, run-length encode where the
logits are) against the host way the CPU pipeline uses, and the background writer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos.masks import RunLengthMasks
from rvos.proposals import proposals_from_outputs
from stage1_referdino.runner import MaskWriter, RawOutputs

# Per query-frame IoU the device way must reach against the host way (issue 10).
MIN_IOU = 0.999
FRAME_SIZE = (90, 161)  # odd width: bilinear weights that are not dyadic fractions


def smooth_logits(seed: int, shape=(7, 5, 23, 41)) -> np.ndarray:
    """``[T, N, h, w] float32`` logits that look like a model's: smooth blobs around 0, many
    pixels near the threshold."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((*shape[:2], 6, 9)).astype(np.float32))
    smooth = F.interpolate(coarse, size=shape[2:], mode="bicubic", align_corners=False)
    return (smooth * 8.0).numpy()


def per_mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each ``[H, W]`` mask of two ``[..., H, W] bool`` stacks (both empty: 1)."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def both_ways(logits: np.ndarray, **kwargs):
    scores = np.random.default_rng(1).random(logits.shape[:2], dtype=np.float32)
    boxes = np.zeros((*logits.shape[:2], 4), dtype=np.float32)
    options = {"top_k": 3, "obj_threshold": 0.5, "frames_per_chunk": 3, **kwargs}
    host = proposals_from_outputs(scores, boxes, logits, FRAME_SIZE, **options)
    device = proposals_from_outputs(
        scores, boxes, torch.from_numpy(logits), FRAME_SIZE, on_device=True, **options
    )
    return host, device


@pytest.mark.parametrize(
    "masks",
    [
        np.zeros((2, 3, 4), dtype=bool),  # empty: one run each
        np.ones((2, 3, 4), dtype=bool),  # full: a zero-length first run
        np.random.default_rng(0).random((3, 4, 9, 13)) > 0.5,
        np.zeros((0, 5, 6), dtype=bool),  # no masks at all
    ],
)
def test_tensor_encoding_equals_numpy_encoding(masks: np.ndarray) -> None:
    expected = RunLengthMasks.encode(masks)
    encoded = RunLengthMasks.encode_tensor(torch.from_numpy(masks))
    assert encoded.shape == expected.shape
    np.testing.assert_array_equal(encoded.counts, expected.counts)
    np.testing.assert_array_equal(encoded.offsets, expected.offsets)
    assert encoded.counts.dtype == expected.counts.dtype == np.uint32


def test_device_way_reaches_the_iou_bar_per_query_frame() -> None:
    """The device way against the host way, per query-frame: IoU >= 0.999 (run on CPU tensors
    here, where the two are in fact identical; on a GPU only near-zero logits can flip, see the
    next test)."""
    for seed in range(3):
        host, device = both_ways(smooth_logits(seed))
        np.testing.assert_array_equal(device.query_ids, host.query_ids)
        np.testing.assert_array_equal(device.scores, host.scores)
        iou = per_mask_iou(device.masks.decode(), host.masks.decode())
        assert iou.shape == (7, 3)
        assert iou.min() >= MIN_IOU, (seed, iou.min())
        answer_iou = per_mask_iou(device.answer.decode(), host.answer.decode())
        assert answer_iou.min() >= MIN_IOU


def test_device_way_on_the_cpu_is_exact() -> None:
    host, device = both_ways(smooth_logits(4), top_k=None)
    np.testing.assert_array_equal(device.masks.counts, host.masks.counts)
    np.testing.assert_array_equal(device.masks.offsets, host.masks.offsets)
    np.testing.assert_array_equal(device.answer.counts, host.answer.counts)


def test_pixels_flip_only_where_the_upsampled_logit_is_within_rounding_of_zero() -> None:
    """Another device's bilinear kernel rounds its weighted sums differently. Emulate one with
    float64 arithmetic on logits built to cancel (values in {-2, -1, 1, 2}, upsampled 3x, so that
    many weighted sums are exactly 0): the thresholded masks differ from the float32 host way,
    and only at pixels whose upsampled logit is within float32 rounding of 0."""
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.choice(np.float32([-2, -1, 1, 2]), size=(4, 3, 10, 14)))
    size = (30, 42)
    exact = F.interpolate(logits.double(), size=size, mode="bilinear", align_corners=False)
    host = F.interpolate(logits, size=size, mode="bilinear", align_corners=False) > 0
    flipped = (host != (exact > 0)).numpy()
    assert flipped.any()  # the emulated device does disagree somewhere
    # float32 rounding of a convex combination of four logits: a few ulps of their magnitude
    rounding = 8 * np.finfo(np.float32).eps * float(logits.abs().max())
    assert np.abs(exact.numpy()[flipped]).max() <= rounding


def test_rounding_differences_keep_the_iou_bar_on_model_like_logits() -> None:
    """On smooth, model-like logits the same emulated device stays above the IoU bar."""
    for seed in range(3):
        logits = torch.from_numpy(smooth_logits(seed))
        exact = F.interpolate(logits.double(), size=FRAME_SIZE, mode="bilinear") > 0
        host = F.interpolate(logits, size=FRAME_SIZE, mode="bilinear") > 0
        assert per_mask_iou(host.numpy(), exact.numpy()).min() >= MIN_IOU


def test_gpu_tensors_take_the_device_way_by_default(monkeypatch) -> None:
    from rvos import proposals

    calls = []
    monkeypatch.setattr(
        proposals, "_encode_on_device", lambda *a: calls.append("device") or ("x", "y")
    )
    monkeypatch.setattr(proposals, "_encode_on_host", lambda *a: calls.append("host") or ("x", "y"))

    class FakeCudaTensor:
        device = torch.device("cuda", 0)

    scores = np.ones((1, 2), dtype=np.float32)
    boxes = np.zeros((1, 2, 4), dtype=np.float32)
    for logits in (FakeCudaTensor(), torch.zeros(1, 2, 3, 3), np.zeros((1, 2, 3, 3))):
        proposals.proposals_from_outputs(
            scores, boxes, logits, (4, 4), top_k=None, obj_threshold=0.2
        )
    assert calls == ["device", "host", "host"]


def _raw(seed: int) -> RawOutputs:
    logits = smooth_logits(seed, shape=(3, 4, 9, 11))
    scores = np.random.default_rng(seed).random((3, 4), dtype=np.float32)
    return RawOutputs(scores, np.zeros((3, 4, 4), np.float32), torch.from_numpy(logits))


def _make(raw: RawOutputs):
    return proposals_from_outputs(
        raw.scores, raw.boxes, raw.mask_logits, (20, 25), top_k=2, obj_threshold=0.5
    )


def test_background_writer_gives_the_in_line_entries_in_order() -> None:
    threads = set()

    def make(raw: RawOutputs):
        threads.add(threading.current_thread().name)
        assert torch.is_inference_mode_enabled()
        return _make(raw)

    results = {}
    with MaskWriter(background=True) as writer:
        for index in range(4):
            for exp_id, entry in writer.submit(str(index), make, _raw(index)):
                results[exp_id] = entry
            assert len(results) == index  # the previous entry is done, this one is in flight
        for exp_id, entry in writer.finish():
            results[exp_id] = entry
    assert list(results) == ["0", "1", "2", "3"]
    assert all(name.startswith("stage1-masks") for name in threads)
    for index in range(4):
        expected = _make(_raw(index))
        np.testing.assert_array_equal(results[str(index)].masks.counts, expected.masks.counts)

    with MaskWriter(background=False) as writer:
        assert [e for e, _ in writer.submit("a", _make, _raw(0))] == ["a"]
        assert writer.finish() == []


def test_background_writer_raises_the_threads_error() -> None:
    def fail(raw: RawOutputs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError), MaskWriter(background=True) as writer:
        writer.submit("0", fail, _raw(0))
        writer.finish()


def test_legacy_arrays_are_host_arrays() -> None:
    arrays = _raw(0).legacy_arrays()
    assert isinstance(arrays["masks"], np.ndarray) and arrays["masks"].shape == (3, 4, 9, 11)


def test_device_out_of_memory_falls_back_to_the_host(monkeypatch, caplog) -> None:
    from rvos import proposals

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(proposals, "_encode_on_device", out_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    host, fallback = both_ways(smooth_logits(6))
    assert "making them on the host" in caplog.text
    np.testing.assert_array_equal(fallback.masks.counts, host.masks.counts)
    np.testing.assert_array_equal(fallback.answer.counts, host.answer.counts)
