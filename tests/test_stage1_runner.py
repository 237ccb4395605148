"""The stage-1 runner's bookkeeping around the model (the model itself: test_stage1_*)."""

import numpy as np
import torch
from split_factory import make_split
from test_intermediates import make_stage1

from rvos import intermediates as im
from rvos.config import compose_config
from rvos.pipeline import worker_config
from stage1_referdino import runner
from stage1_referdino.proposals import answer_query_indices, kept_query_ids


def test_answer_rule_matches_referdino_mevis_inference():
    scores = np.array([[0.1, 0.3, 0.25], [0.2, 0.2, 0.1]], dtype=np.float32)  # means .15 .25 .175
    assert answer_query_indices(scores, 0.2).tolist() == [1]
    assert answer_query_indices(scores, 0.1).tolist() == [0, 1, 2]
    assert answer_query_indices(scores, 0.9).tolist() == [1]  # none passes: top-1
    assert kept_query_ids(scores, 2).tolist() == [1, 2]  # best two, in the model's order
    assert kept_query_ids(scores, 1).tolist() == [1]
    assert kept_query_ids(scores, None).tolist() == [0, 1, 2]
    assert kept_query_ids(scores, 5).tolist() == [0, 1, 2]


def test_out_of_memory_retries_with_features_in_host_memory(tmp_path, monkeypatch):
    root = make_split(tmp_path / "split", {"v": {"frames": ["00000"], "expressions": {"0": "x"}}})
    config = worker_config(compose_config([f"data.root={root}", f"work_dir={tmp_path / 'work'}"]))
    attempts = []

    def fake_record(model, images, sentences, stage1, **kwargs):
        attempts.append(stage1["feature_cache_device"])
        if stage1["feature_cache_device"] != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return make_stage1()

    monkeypatch.setattr(runner, "build_stage1_model", lambda stage1, device: None)
    monkeypatch.setattr(runner, "stage1_record", fake_record)
    runner.build_video_processor(config, "cpu")("v")
    assert attempts == ["auto", "cpu"]
    assert im.stage_path(tmp_path / "work", 1, "v").is_file()


def test_proposals_equal_the_dense_computation():
    """Chunked upsampling + encoding gives the masks of one dense interpolate over all frames."""
    import torch.nn.functional as F

    from stage1_referdino.proposals import proposals_from_outputs

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
    answer = answer_query_indices(scores, 0.5)
    np.testing.assert_array_equal(out.answer.decode(), dense[:, answer].any(axis=1))
    np.testing.assert_array_equal(out.scores, scores[:, kept])
