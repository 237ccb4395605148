"""Stage-1 mask post-processing: masks upsampled, thresholded and run-length encoded where the
logits are, against the same masks made densely and encoded in numpy, and the background writer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos.masks import RunLengthMasks
from rvos.proposals import answer_query_ids, kept_query_ids
from stage1_referdino import postprocess
from stage1_referdino.postprocess import proposals_from_outputs, query_masks
from stage1_referdino.runner import MaskWriter, RawOutputs

# Per query-frame IoU that masks made on another device must reach against the CPU's.
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


def scores_and_boxes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.random.default_rng(1).random(logits.shape[:2], dtype=np.float32)
    return scores, np.zeros((*logits.shape[:2], 4), dtype=np.float32)


def dense_runs(logits: np.ndarray, scores: np.ndarray, top_k, obj_threshold: float):
    """The record's masks made the plain way: every frame upsampled at once, encoded in numpy:
    ``(kept queries' runs, answer's runs)``."""
    dense = F.interpolate(torch.from_numpy(logits), size=FRAME_SIZE, mode="bilinear") > 0
    dense = dense.numpy()
    kept, chosen = kept_query_ids(scores, top_k), answer_query_ids(scores, obj_threshold)
    return RunLengthMasks.encode(dense[:, kept]), RunLengthMasks.encode(dense[:, chosen].any(1))


def assert_same_runs(got: RunLengthMasks, expected: RunLengthMasks) -> None:
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.offsets, expected.offsets)


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


@pytest.mark.parametrize(("seed", "top_k"), [(0, 3), (1, 3), (2, None), (3, 1)])
def test_record_masks_are_the_dense_masks_run_for_run(seed, top_k) -> None:
    """Chunk by chunk, where the logits are, the runs of one dense upsampling encoded in numpy
    (on the CPU: exactly; other devices, see the next two tests)."""
    logits = smooth_logits(seed)
    scores, boxes = scores_and_boxes(logits)
    for given in (logits, torch.from_numpy(logits)):
        record = proposals_from_outputs(
            scores, boxes, given, FRAME_SIZE, top_k=top_k, obj_threshold=0.5, frames_per_chunk=3
        )
        kept, answer = dense_runs(logits, scores, top_k, obj_threshold=0.5)
        np.testing.assert_array_equal(record.query_ids, kept_query_ids(scores, top_k))
        np.testing.assert_array_equal(record.scores, scores[:, record.query_ids])
        assert_same_runs(record.masks, kept)
        assert_same_runs(record.answer, answer)


def test_every_query_masks_are_the_record_masks() -> None:
    logits = smooth_logits(5)
    scores, boxes = scores_and_boxes(logits)
    record = proposals_from_outputs(
        scores, boxes, logits, FRAME_SIZE, top_k=None, obj_threshold=0.5
    )
    assert_same_runs(query_masks(torch.from_numpy(logits), FRAME_SIZE), record.masks)


def test_frames_are_upsampled_a_chunk_at_a_time(monkeypatch) -> None:
    """Full-size masks of a long video do not fit in memory at once: the upsampling sees at most
    ``frames_per_chunk`` frames, and only the queries the record needs."""
    seen = []
    threshold = postprocess.threshold_mask_logits

    def spy(chunk: torch.Tensor, size):
        seen.append(tuple(chunk.shape))
        return threshold(chunk, size)

    monkeypatch.setattr(postprocess, "threshold_mask_logits", spy)
    logits = smooth_logits(6)
    scores, boxes = scores_and_boxes(logits)
    record = proposals_from_outputs(
        scores, boxes, logits, FRAME_SIZE, top_k=2, obj_threshold=2.0, frames_per_chunk=3
    )
    needed = np.union1d(record.query_ids, answer_query_ids(scores, 2.0)).size
    assert [shape[:2] for shape in seen] == [(3, needed), (3, needed), (1, needed)]
    assert needed < logits.shape[1]


def test_pixels_flip_only_where_the_upsampled_logit_is_within_rounding_of_zero() -> None:
    """Another device's bilinear kernel rounds its weighted sums differently. Emulate one with
    float64 arithmetic on logits built to cancel (values in {-2, -1, 1, 2}, upsampled 3x, so that
    many weighted sums are exactly 0): the thresholded masks differ from the CPU's float32 ones,
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
    """A device that runs out of memory for the full-size masks: they are made again from the
    logits copied to the host, the same runs."""
    logits = smooth_logits(6)
    scores, boxes = scores_and_boxes(logits)
    expected = proposals_from_outputs(scores, boxes, logits, FRAME_SIZE, top_k=3, obj_threshold=0.5)
    devices = []

    def out_of_memory_once(encode):
        def attempt(tensor, *args, **kwargs):
            devices.append(tensor.device.type)
            if len(devices) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return encode(tensor, *args, **kwargs)

        return attempt

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(
        postprocess,
        "_encode_kept_and_answer",
        out_of_memory_once(postprocess._encode_kept_and_answer),
    )
    fallback = proposals_from_outputs(
        scores, boxes, torch.from_numpy(logits), FRAME_SIZE, top_k=3, obj_threshold=0.5
    )
    assert "making them on the host" in caplog.text and devices == ["cpu", "cpu"]
    assert_same_runs(fallback.masks, expected.masks)
    assert_same_runs(fallback.answer, expected.answer)

    devices.clear()
    caplog.clear()
    monkeypatch.setattr(
        postprocess, "encode_mask_logits", out_of_memory_once(postprocess.encode_mask_logits)
    )
    masks = query_masks(logits, FRAME_SIZE)
    assert "making them on the host" in caplog.text and len(devices) == 2
    dense = F.interpolate(torch.from_numpy(logits), size=FRAME_SIZE, mode="bilinear") > 0
    assert_same_runs(masks, RunLengthMasks.encode(dense.numpy()))
