"""Backbone features computed once serve every expression, bit-identically (CPU float32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from stage1_referdino import ReferDINO, load_referdino, preprocess

pytestmark = pytest.mark.slow  # loads the fixture models

TINY = "referdino_tiny"
EXPRESSIONS = [
    "the child sitting on the bed",
    "a kid moving to the left. then jumping?",
    "the white cup on the table.",
]
# A short clip length so that the video spans several clips (the last one shorter).
CLIP_LEN = 4
NUM_FRAMES = 10


@pytest.fixture(scope="module")
def model(fixtures_dir: Path) -> ReferDINO:
    tiny = fixtures_dir / TINY
    model = load_referdino(tiny / "model.yaml", tiny / "referdino_checkpoint.pth")
    model.clip_len = CLIP_LEN
    return model


@pytest.fixture(scope="module")
def video(fixtures_dir: Path) -> torch.Tensor:
    tiny = fixtures_dir / TINY
    with open(tiny / "fixture.json", encoding="utf-8") as f:
        meta = json.load(f)
    names = meta["frame_names"][:NUM_FRAMES]
    frames = [Image.open(tiny / "frames" / f"{name}.jpg") for name in names]
    return preprocess(frames, short_side=meta["short_side"])


def test_reused_features_give_identical_outputs(model: ReferDINO, video: torch.Tensor) -> None:
    features = model.encode_video(video)
    assert [c.num_frames for c in features.clips] == [4, 4, 2]
    for expression in EXPRESSIONS:
        reused = model.infer_features(features, expression)
        direct = model.infer(video, expression)
        assert reused.keys() == direct.keys()
        for key in direct:
            assert torch.equal(reused[key], direct[key]), (expression, key)


def test_offloaded_features_give_identical_outputs(model: ReferDINO, video: torch.Tensor) -> None:
    on_device = model.encode_video(video)
    offloaded = model.encode_video(video, storage_device="cpu")
    a = model.infer_features(on_device, EXPRESSIONS[0])
    b = model.infer_features(offloaded, EXPRESSIONS[0])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_output_shapes(model: ReferDINO, video: torch.Tensor) -> None:
    out = model.infer(video, EXPRESSIONS[1])
    t, _, h, w = video.shape
    num_queries = out["pred_logits"].shape[1]
    assert out["pred_logits"].shape == (t, num_queries, 1)
    assert out["pred_boxes"].shape == (t, num_queries, 4)
    assert out["pred_masks"].shape == (t, num_queries, -(-h // 4), -(-w // 4))


def test_empty_expression_is_rejected(model: ReferDINO, video: torch.Tensor) -> None:
    features = model.encode_video(video[:2])
    with pytest.raises(ValueError, match="expression"):
        model.infer_features(features, "   ")
