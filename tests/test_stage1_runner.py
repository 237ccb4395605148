"""The stage-1 runner's bookkeeping around the model (the model itself: test_stage1_*)."""

from types import SimpleNamespace

import numpy as np
import torch

from referdino_plus.config import load_config
from referdino_plus.pipeline import stage_fingerprints, stage_job
from rvos import intermediates as im
from rvos.options import CacheDevice
from rvos.proposals import answer_query_ids, kept_query_ids
from stage1_referdino import runner


def test_answer_rule_matches_referdino_mevis_inference():
    scores = np.array([[0.1, 0.3, 0.25], [0.2, 0.2, 0.1]], dtype=np.float32)  # means .15 .25 .175
    assert answer_query_ids(scores, 0.2).tolist() == [1]
    assert answer_query_ids(scores, 0.1).tolist() == [0, 1, 2]
    assert answer_query_ids(scores, 0.9).tolist() == [1]  # none passes: top-1
    assert kept_query_ids(scores, 2).tolist() == [1, 2]  # best two, in the model's order
    assert kept_query_ids(scores, 1).tolist() == [1]
    assert kept_query_ids(scores, None).tolist() == [0, 1, 2]
    assert kept_query_ids(scores, 5).tolist() == [0, 1, 2]


def test_out_of_memory_retries_with_features_in_host_memory(
    tmp_path, monkeypatch, make_split, make_stage1
):
    root = make_split(tmp_path / "split", {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    cfg = load_config([f"data.root={root}", f"work_dir={tmp_path / 'work'}"])
    job = stage_job(cfg, stage_fingerprints(cfg), 1)
    attempts = []

    def fake_record(model, images, sentences, options, **kwargs):
        attempts.append(options.feature_cache_device)
        if options.feature_cache_device != CacheDevice.cpu:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return make_stage1()

    # the model's tokenizer counts each sentence's tokens (one short sentence here)
    model = SimpleNamespace(tokenizer=lambda text: {"input_ids": [101, 0, 102]}, max_text_len=256)
    monkeypatch.setattr(runner, "build_stage1_model", lambda options, device: model)
    monkeypatch.setattr(runner, "stage1_record", fake_record)
    runner.build_video_processor(job, "cpu")("v")
    assert attempts == ["auto", "cpu"]
    assert im.stage_path(tmp_path / "work", 1, "v").is_file()


def test_proposals_equal_the_dense_computation():
    """Chunked upsampling + encoding gives the masks of one dense interpolate over all frames."""
    import torch.nn.functional as F

    from stage1_referdino.postprocess import proposals_from_outputs

    rng = np.random.default_rng(3)
    num_frames, num_queries = 11, 5
    scores = rng.random((num_frames, num_queries), dtype=np.float32)
    boxes = rng.random((num_frames, num_queries, 4), dtype=np.float32)
    logits = rng.standard_normal((num_frames, num_queries, 6, 9)).astype(np.float32)
    out = proposals_from_outputs(
        scores, boxes, logits, (23, 35), top_k=3, obj_threshold=0.5, frames_per_chunk=4
    )
    dense = F.interpolate(torch.from_numpy(logits), size=(23, 35), mode="bilinear") > 0
    dense = dense.numpy()
    kept = kept_query_ids(scores, 3)
    np.testing.assert_array_equal(out.query_ids, kept)
    np.testing.assert_array_equal(out.masks.decode(), dense[:, kept])
    answer = answer_query_ids(scores, 0.5)
    np.testing.assert_array_equal(out.answer.decode(), dense[:, answer].any(axis=1))
    np.testing.assert_array_equal(out.scores, scores[:, kept])
