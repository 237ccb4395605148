"""Stage 1 parity: our ReferDINO port reproduces the original code's outputs (tiny fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stage1_referdino import ReferDINO, VideoFeatures, load_referdino, preprocess

pytestmark = pytest.mark.slow  # loads the fixture models

TINY = "referdino_tiny"
# Tolerances of fixtures/README.md (max abs diff, float32 CPU); never loosened.
TOLERANCE = {"pred_logits": 1e-3, "pred_masks": 1e-3, "pred_boxes": 1e-4}


@pytest.fixture(scope="module")
def tiny_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / TINY


@pytest.fixture(scope="module")
def fixture_meta(tiny_dir: Path) -> dict:
    with open(tiny_dir / "fixture.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> ReferDINO:
    return load_referdino(tiny_dir / "model.yaml", tiny_dir / "referdino_checkpoint.pth")


@pytest.fixture(scope="module")
def video(tiny_dir: Path, fixture_meta: dict) -> torch.Tensor:
    frames = [
        Image.open(tiny_dir / "frames" / f"{name}.jpg") for name in fixture_meta["frame_names"]
    ]
    return preprocess(frames, short_side=fixture_meta["short_side"])


@pytest.fixture(scope="module")
def features(model: ReferDINO, video: torch.Tensor) -> VideoFeatures:
    return model.encode_video(video)


def test_preprocess_matches_fixture_input(video: torch.Tensor, fixture_meta: dict) -> None:
    assert video.dtype == torch.float32
    assert list(video.shape) == [len(fixture_meta["frame_names"]), 3, *fixture_meta["input_hw"]]


@pytest.mark.parametrize("exp_id", ["0", "1"])
def test_matches_original_outputs(
    model: ReferDINO,
    features: VideoFeatures,
    tiny_dir: Path,
    fixture_meta: dict,
    exp_id: str,
) -> None:
    assert exp_id in fixture_meta["expressions"]
    out = model.infer_features(features, fixture_meta["expressions"][exp_id])
    expected = np.load(tiny_dir / "expected_outputs.npz")
    for key, tolerance in TOLERANCE.items():
        reference = expected[f"{exp_id}/{key}"]
        got = out[key].cpu().numpy()
        assert got.shape == reference.shape, key
        assert got.dtype == np.float32, key
        diff = float(np.abs(got - reference).max())
        assert diff <= tolerance, f"{key}: max abs diff {diff} > {tolerance}"


def test_fixture_expressions_are_all_tested(fixture_meta: dict) -> None:
    assert sorted(fixture_meta["expressions"]) == ["0", "1"]
