"""SharedFeatureVideoPredictor around sam2: the record of the sam2 it was written for, the frames a
pass visits, and clearing memories around a new prompt (``clear_non_cond_mem_around_input``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from sam2.sam2_video_predictor import SAM2VideoPredictor

from stage2_sam2_refine import predictor as predictor_module
from stage2_sam2_refine.build import build_sam2_predictor
from stage2_sam2_refine.predictor import (
    SAM2_SIGNATURES,
    SharedFeatureVideoPredictor,
    VideoSession,
    check_sam2_compatibility,
)
from stage2_sam2_refine.samurai import SAMURAI_SAM2_SIGNATURES

NUM_FRAMES = 24  # the first frames of videoA
PROMPT_FRAME = 10  # both objects are prompted here first


def _build(fixtures_dir: Path, overrides: dict | None = None) -> SharedFeatureVideoPredictor:
    tiny = fixtures_dir / "sam2_tiny"
    return build_sam2_predictor(
        tiny / "tiny_sam2.1.yaml", tiny / "weights_propagating.pt", overrides=overrides
    )


def _open(model: SharedFeatureVideoPredictor, fixtures_dir: Path) -> VideoSession:
    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    return model.open_video(sorted(folder.glob("*.jpg"))[:NUM_FRAMES], video_id="videoA")


def _disc(session: VideoSession, cy: int, cx: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: session.height, : session.width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def _non_cond_frames(state: dict, obj_idx: int) -> list[int]:
    return sorted(state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"])


# --------------------------------------------------------------------------------------------------
# The sam2 these classes were written for
# --------------------------------------------------------------------------------------------------


def test_installed_sam2_matches_the_record():
    assert check_sam2_compatibility() == ""
    assert check_sam2_compatibility(SAMURAI_SAM2_SIGNATURES, strict=True) == ""
    assert set(SAM2_SIGNATURES) < set(SAMURAI_SAM2_SIGNATURES)


def test_changed_sam2_method_is_named_with_both_signatures(monkeypatch: pytest.MonkeyPatch):
    def get_image_feature(self, inference_state, frame_idx):  # batch_size gone
        raise NotImplementedError

    monkeypatch.setattr(SAM2VideoPredictor, "_get_image_feature", get_image_feature)
    message = check_sam2_compatibility()
    line = next(x for x in message.splitlines() if "SAM2VideoPredictor._get_image_feature" in x)
    assert "expected (self, inference_state, frame_idx, batch_size)" in line
    assert "found (self, inference_state, frame_idx)" in line
    assert len(message.splitlines()) == 2  # the heading and this method
    with pytest.raises(RuntimeError, match="_get_image_feature: expected"):
        check_sam2_compatibility(strict=True)


def test_sam2_defining_a_method_we_define_is_reported(monkeypatch: pytest.MonkeyPatch):
    def clear(self, inference_state, frame_idx, obj_idx):
        raise NotImplementedError

    monkeypatch.setattr(
        SAM2VideoPredictor, "_clear_obj_non_cond_mem_around_input", clear, raising=False
    )
    message = check_sam2_compatibility()
    assert "_clear_obj_non_cond_mem_around_input: expected absent from sam2" in message
    assert "found (self, inference_state, frame_idx, obj_idx)" in message


@pytest.mark.slow
def test_other_sam2_version_warns_on_build_but_builds(fixtures_dir, monkeypatch, caplog):
    monkeypatch.setattr(predictor_module, "installed_sam2_version", lambda: "1.1.1")
    assert "sam2 version: expected 1.1.0, found 1.1.1" in check_sam2_compatibility()
    with caplog.at_level(logging.WARNING, logger="stage2_sam2_refine.predictor"):
        model = _build(fixtures_dir)
    assert isinstance(model, SharedFeatureVideoPredictor)
    assert "SharedFeatureVideoPredictor" in caplog.text and "found 1.1.1" in caplog.text


# --------------------------------------------------------------------------------------------------
# Propagation
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_clearing_memories_around_a_new_prompt(fixtures_dir: Path):
    """With ``clear_non_cond_mem_around_input``, a new prompt drops the prompted object's tracked
    outputs within ``memory_temporal_stride_for_eval * num_maskmem`` frames, and no other's."""
    model = _build(fixtures_dir, {"clear_non_cond_mem_around_input": True})
    session = _open(model, fixtures_dir)
    state = model.init_expression_state(session)
    model.add_new_mask(state, PROMPT_FRAME, 1, _disc(session, 200, 300, 80))
    model.add_new_mask(state, PROMPT_FRAME, 2, _disc(session, 300, 700, 60))
    tracked = list(range(PROMPT_FRAME + 1, NUM_FRAMES))
    assert [t for t, _, _ in model.propagate_in_video(state)] == [PROMPT_FRAME, *tracked]
    assert _non_cond_frames(state, 0) == _non_cond_frames(state, 1) == tracked

    # object 1 gets a second prompt, on a frame no pass has visited
    new_prompt = PROMPT_FRAME - 2
    model.add_new_mask(state, new_prompt, 1, _disc(session, 200, 290, 80))
    radius = model.memory_temporal_stride_for_eval * model.num_maskmem
    assert radius == 7  # tiny SAM 2.1: stride 1, 7 memories
    order = model.propagation_order(state)  # counts the pending prompt
    assert list(order) == list(range(new_prompt, NUM_FRAMES))
    model.propagate_in_video_preflight(state)  # sam2's, calling the per-object clearing
    assert _non_cond_frames(state, 0) == [t for t in tracked if t > new_prompt + radius]
    assert _non_cond_frames(state, 1) == tracked

    outputs = list(model.propagate_in_video(state))
    assert [t for t, _, _ in outputs] == list(order)
    assert all(masks.shape == (2, 1, session.height, session.width) for _, _, masks in outputs)
    # frames tracked before the prompts on PROMPT_FRAME were dropped when the pass reached them
    assert _non_cond_frames(state, 0) == _non_cond_frames(state, 1) == tracked


@pytest.mark.slow
def test_propagation_order_counts_the_frames_of_a_pass(fixtures_dir: Path):
    model = _build(fixtures_dir)
    session = _open(model, fixtures_dir)
    state = model.init_expression_state(session)
    with pytest.raises(RuntimeError, match="no prompted frame"):
        model.propagation_order(state)
    model.add_new_mask(state, PROMPT_FRAME, 0, _disc(session, 200, 300, 80))
    for kwargs in [
        {"reverse": False, "max_frame_num_to_track": 5},
        {"reverse": True},
        {"reverse": True, "start_frame_idx": 0},
    ]:
        order = model.propagation_order(state, **kwargs)
        frames = [t for t, _, _ in model.propagate_in_video(state, **kwargs)]
        assert frames == list(order), kwargs
    assert list(model.propagation_order(state, reverse=True)) == list(range(PROMPT_FRAME, -1, -1))
    assert len(model.propagation_order(state, max_frame_num_to_track=5)) == 6
