"""SAMURAI tracking: Kalman filter, candidate choice, memory selection, per-object state, and
two-object propagation on the tiny SAM 2."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.sam2_reference import reference_refine

from referdino_plus.config import load_config
from rvos.legacy import read_legacy_npz
from rvos.masks import upsample_mask_logits
from stage2_sam2_refine.build import build_sam2_predictor
from stage2_sam2_refine.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah
from stage2_sam2_refine.options import PromptKind, Tracker
from stage2_sam2_refine.predictor import SharedFeatureVideoPredictor, VideoSession
from stage2_sam2_refine.refine import Refiner
from stage2_sam2_refine.sam2_tracker import Sam2Tracker
from stage2_sam2_refine.samurai import (
    IOU_SCORE_KEY,
    KF_SCORE_KEY,
    STATE_KEY,
    MemoryCandidate,
    ObjectMotion,
    SamuraiState,
    SamuraiVideoPredictor,
    admits_to_memory,
    box_iou,
    mask_boxes,
    motion_weighted_scores,
    samurai_model_overrides,
    select_memory_frames,
)

# SAM 2 warns on every frame that its optional CUDA extension (hole filling) is missing.
PROMPT_FRAME = 10  # the frame both objects are prompted on (forward 10..39, reverse 10..0)
DEFAULTS = load_config().stage2.samurai  # configs/pipeline.yaml


def options(**changes):
    """The default SAMURAI options with ``changes``."""
    return dataclasses.replace(DEFAULTS, **changes)


def _true_box(t: int) -> np.ndarray:
    """A box moving at constant velocity in (cx, cy, a, h): 4 and 2 px/frame, growing 0.5 px/frame,
    aspect 2/3."""
    height = 60 + 0.5 * t
    return xyah_to_xyxy(np.array([100 + 4 * t, 80 + 2 * t, 2 / 3, height]))


# --------------------------------------------------------------------------------------------------
# Kalman filter
# --------------------------------------------------------------------------------------------------


def test_box_conversions_round_trip():
    box = np.array([10.0, 20.0, 50.0, 100.0])
    np.testing.assert_allclose(xyxy_to_xyah(box), [30, 60, 0.5, 80])
    np.testing.assert_allclose(xyah_to_xyxy(xyxy_to_xyah(box)), box)
    # a zero-height box is measured 1 px high
    assert xyxy_to_xyah(np.array([0.0, 5.0, 4.0, 5.0]))[3] == 1.0


def test_filter_starts_still_and_requires_initiate():
    kf = KalmanBoxFilter()
    assert not kf.initialized
    with pytest.raises(RuntimeError):
        kf.predict()
    kf.initiate(_true_box(0))
    np.testing.assert_allclose(kf.predict(), _true_box(0))  # zero initial velocity


@pytest.mark.parametrize(("noise_px", "tolerance_px"), [(0.0, 0.1), (1.0, 2.0)])
def test_filter_converges_on_constant_velocity_track(noise_px: float, tolerance_px: float):
    """After 30 updates the one-frame prediction is within ``tolerance_px`` of the true box."""
    rng = np.random.default_rng(0)
    kf = KalmanBoxFilter()
    kf.initiate(_true_box(0))
    first_error = np.abs(kf.predict() - _true_box(1)).max()
    kf.update(_true_box(1))
    for t in range(2, 31):
        kf.predict()
        kf.update(_true_box(t) + rng.normal(0.0, noise_px, 4))
    error = np.abs(kf.predict() - _true_box(31)).max()
    assert error < tolerance_px < first_error
    np.testing.assert_allclose(kf.mean[4:], [4, 2, 0, 0.5], atol=0.25)  # learnt velocities


# --------------------------------------------------------------------------------------------------
# Candidate masks
# --------------------------------------------------------------------------------------------------


def test_mask_boxes_and_iou():
    masks = torch.full((3, 20, 30), -5.0)
    masks[0, 2:6, 3:9] = 5.0  # rows 2..5, cols 3..8
    masks[1, 10, 20] = 1.0  # one pixel
    boxes, valid = mask_boxes(masks)
    np.testing.assert_array_equal(boxes, [[3, 2, 8, 5], [20, 10, 20, 10], [0, 0, 0, 0]])
    np.testing.assert_array_equal(valid, [True, True, False])

    ref = np.array([0.0, 0.0, 10.0, 10.0])
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    iou = box_iou(ref, others, np.array([True, True, True, False]))
    np.testing.assert_allclose(iou, [1.0, 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(motion_weighted_scores([0.9, 0.8], [0.0, 1.0], 0.25), [0.675, 0.85])


def _stable_motion(config, frames: int) -> ObjectMotion:
    """A motion state fed ``frames`` frames of the constant-velocity track (single candidate)."""
    motion = ObjectMotion(config)
    for t in range(frames):
        motion.choose(np.array([0.9]), _true_box(t)[None], np.array([True]))
    return motion


def _far_and_consistent_candidates(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate 0: higher predicted IoU, far from the track; candidate 1: on the track."""
    far = _true_box(t) + 300.0
    boxes = np.stack([far, _true_box(t)])
    return np.array([0.9, 0.8]), boxes, np.array([True, True])


@pytest.mark.parametrize(("weight", "expected"), [(0.25, 1), (0.0, 0)])
def test_stable_track_prefers_motion_consistent_mask(weight: float, expected: int):
    config = options(kf_score_weight=weight, stable_frames_threshold=5)
    motion = _stable_motion(config, 10)
    assert motion.stable_frames == 5  # counting stops at the threshold
    choice = motion.choose(*_far_and_consistent_candidates(10))
    # 0.25: 0.75 * 0.9 = 0.675 < 0.25 * ~1 + 0.75 * 0.8 = ~0.85
    assert choice.index == expected
    assert choice.kf_score == pytest.approx(0.0 if expected == 0 else 1.0, abs=0.05)


def test_unstable_track_keeps_highest_predicted_iou():
    config = options(stable_frames_threshold=15)
    motion = _stable_motion(config, 5)
    assert motion.stable_frames == 5
    choice = motion.choose(*_far_and_consistent_candidates(5))
    assert choice.index == 0 and choice.kf_score is None
    assert motion.stable_frames == 6


def test_low_iou_or_empty_mask_makes_track_unstable():
    config = options(stable_frames_threshold=3, stable_ious_threshold=0.3)
    motion = _stable_motion(config, 6)
    motion.choose(np.array([0.1]), _true_box(6)[None], np.array([True]))  # below 0.3
    assert motion.stable_frames == 0
    # restart: an empty best mask is no measurement, the filter is left as it was
    mean = motion.filter.mean.copy()
    motion.choose(np.array([0.9]), np.zeros((1, 4)), np.array([False]))
    assert motion.stable_frames == 0
    np.testing.assert_array_equal(motion.filter.mean, mean)
    motion.choose(np.array([0.9]), _true_box(8)[None], np.array([True]))
    assert motion.stable_frames == 1
    np.testing.assert_allclose(motion.filter.box, _true_box(8))


# --------------------------------------------------------------------------------------------------
# Memory selection
# --------------------------------------------------------------------------------------------------


def test_memory_admission_thresholds():
    good = MemoryCandidate(5, iou_score=0.8, object_score=2.0, kf_score=0.6)
    assert admits_to_memory(good)
    assert not admits_to_memory(MemoryCandidate(5, 0.5, 2.0, 0.6))  # iou must exceed 0.5
    assert not admits_to_memory(MemoryCandidate(5, 0.8, -0.1, 0.6))  # object absent
    assert not admits_to_memory(MemoryCandidate(5, 0.8, 2.0, 0.0))  # off the motion track
    assert admits_to_memory(MemoryCandidate(5, 0.8, 2.0, None))  # no motion score yet
    assert admits_to_memory(MemoryCandidate(5, 0.8, 2.0, 0.6), iou_threshold=0.7)
    assert not admits_to_memory(good, iou_threshold=0.9)


def _candidates(scores: dict[int, float], frame_idx: int) -> list[MemoryCandidate]:
    """Past frames before ``frame_idx``, most recent first, with the given predicted IoUs."""
    past = sorted((t for t in scores if t < frame_idx), reverse=True)
    return [MemoryCandidate(t, iou_score=scores[t], object_score=1.0) for t in past]


def test_memory_keeps_previous_frame_and_most_recent_admitted():
    ious = {t: 0.9 for t in range(20)} | {19: 0.1, 17: 0.2, 14: 0.4}
    frames = select_memory_frames(_candidates(ious, 20), previous_frame_idx=19, num_slots=6)
    # 19 is kept although rejected; 17 and 14 are skipped
    assert frames == [19, 18, 16, 15, 13, 12]
    # everything admitted: the last six frames, as SAM 2
    all_good = {t: 0.9 for t in range(20)}
    expected = [19, 18, 17, 16, 15, 14]
    assert select_memory_frames(_candidates(all_good, 20), previous_frame_idx=19) == expected
    # nothing admitted: only the previous frame
    none_good = {t: 0.2 for t in range(20)}
    assert select_memory_frames(_candidates(none_good, 20), previous_frame_idx=19) == [19]


def test_memory_search_stops_after_max_admitted():
    consumed = []

    def lazy() -> Iterator[MemoryCandidate]:
        for t in range(99, -1, -1):
            consumed.append(t)
            yield MemoryCandidate(t, iou_score=0.9 if t % 2 else 0.1, object_score=1.0)

    frames = select_memory_frames(lazy(), previous_frame_idx=99, num_slots=6, max_admitted=3)
    assert frames == [99, 97, 95]
    assert min(consumed) >= 94  # the scan stopped once three frames were admitted


# --------------------------------------------------------------------------------------------------
# Per-object, per-direction state
# --------------------------------------------------------------------------------------------------


def test_objects_have_independent_filters():
    state = SamuraiState(options())
    first, second = state.motion(1, False), state.motion(2, False)
    assert first is not second and state.motion(1, False) is first
    first.choose(np.array([0.9]), _true_box(0)[None], np.array([True]))
    second.choose(np.array([0.9]), _true_box(5)[None], np.array([True]))
    before = second.filter.mean.copy(), second.filter.covariance.copy(), second.stable_frames
    for t in range(1, 4):
        first.choose(np.array([0.9]), _true_box(t)[None], np.array([True]))
    np.testing.assert_array_equal(second.filter.mean, before[0])
    np.testing.assert_array_equal(second.filter.covariance, before[1])
    assert second.stable_frames == before[2] == 1 and first.stable_frames == 4


def test_directions_do_not_share_state():
    state = SamuraiState(options())
    forward, reverse = state.motion(1, False), state.motion(1, True)
    assert forward is not reverse
    forward.choose(np.array([0.9]), _true_box(0)[None], np.array([True]))
    assert not reverse.filter.initialized
    state.reset(reverse=True)
    assert state.motion(1, False) is forward and state.motion(1, True) is not reverse
    state.drop_object(1)
    assert state.motions == {}


# --------------------------------------------------------------------------------------------------
# Tiny SAM 2, two objects, forward then reverse
# --------------------------------------------------------------------------------------------------


def _build(fixtures_dir: Path, cls: type, overrides: dict | None = None):
    tiny = fixtures_dir / "sam2_tiny"
    return build_sam2_predictor(
        tiny / "tiny_sam2.1.yaml",
        tiny / "weights_propagating.pt",
        predictor_cls=cls,
        overrides=overrides,
    )


@pytest.fixture(scope="module")
def samurai_model(fixtures_dir: Path) -> SamuraiVideoPredictor:
    return _build(fixtures_dir, SamuraiVideoPredictor, samurai_model_overrides(DEFAULTS))


@pytest.fixture(scope="module")
def session(fixtures_dir: Path, samurai_model: SamuraiVideoPredictor) -> VideoSession:
    frames = sorted((fixtures_dir / "refine_tiny/mevis/JPEGImages/videoA").glob("*.jpg"))
    return samurai_model.open_video(frames, video_id="videoA")


def _prompt_two_blobs(model: SharedFeatureVideoPredictor, session: VideoSession) -> dict:
    """A fresh expression state with objects 1 and 2 prompted by disc masks on PROMPT_FRAME."""
    state = model.init_state(session)
    yy, xx = np.mgrid[: session.height, : session.width]
    blobs = {1: (200, 300, 80), 2: (300, 700, 60)}
    for obj_id, (cy, cx, radius) in blobs.items():
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        model.add_new_mask(state, PROMPT_FRAME, obj_id, disc)
    return state


def _propagate(model, state, *, reverse: bool, **kwargs) -> dict[int, torch.Tensor]:
    return {
        frame_idx: masks.clone()
        for frame_idx, _, masks in model.propagate_in_video(state, reverse=reverse, **kwargs)
    }


@pytest.mark.slow
def test_samurai_two_objects_forward_then_reverse(samurai_model, session):
    state = _prompt_two_blobs(samurai_model, session)
    forward = _propagate(samurai_model, state, reverse=False)
    motions = samurai_model.samurai_state(state).motions
    assert sorted(motions) == [(1, False), (2, False)]
    assert motions[(1, False)] is not motions[(2, False)]
    after_forward = {k: (m, m.filter.mean.copy(), m.stable_frames) for k, m in motions.items()}

    backward = _propagate(samurai_model, state, reverse=True)
    assert sorted(forward) == list(range(PROMPT_FRAME, 40))
    assert sorted(backward) == list(range(0, PROMPT_FRAME + 1))
    for masks in [*forward.values(), *backward.values()]:
        assert masks.shape == (2, 1, session.height, session.width)
        assert masks.dtype == torch.float32

    # the reverse pass has its own filters and leaves the forward ones untouched
    assert sorted(motions) == [(1, False), (1, True), (2, False), (2, True)]
    for key, (motion, mean, stable) in after_forward.items():
        assert motions[key] is motion and motion.stable_frames == stable
        np.testing.assert_array_equal(motion.filter.mean, mean)
        assert motions[(key[0], True)] is not motion

    # every tracked frame keeps its scores; late forward frames were chosen with motion
    for obj_idx in (0, 1):
        outputs = state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        assert sorted(outputs) == [t for t in range(40) if t != PROMPT_FRAME]
        assert all(IOU_SCORE_KEY in out and KF_SCORE_KEY in out for out in outputs.values())
        late = [outputs[t][KF_SCORE_KEY] for t in range(PROMPT_FRAME + 17, 40)]
        assert all(torch.isfinite(score).all() for score in late)

    # a new expression starts without motion state
    assert STATE_KEY not in samurai_model.init_state(session)


@pytest.mark.slow
def test_neutral_samurai_matches_sam2_forward(fixtures_dir, session):
    """With a zero motion weight, SAM 2's presence threshold and every past frame admitted,
    forward tracking is SAM 2's, bit for bit (the reimplemented SAM head and memory hook)."""
    neutral = samurai_model_overrides(
        options(
            kf_score_weight=0.0,
            min_obj_score_logits=0.0,
            memory_bank_iou_threshold=-1e9,
            memory_bank_obj_score_threshold=-1e9,
            memory_bank_kf_score_threshold=-1e9,
        )
    )
    frames = 12
    results = []
    for cls, overrides in [(SharedFeatureVideoPredictor, None), (SamuraiVideoPredictor, neutral)]:
        model = _build(fixtures_dir, cls, overrides)
        state = _prompt_two_blobs(model, session)  # same weights: the cached features are valid
        results.append(_propagate(model, state, reverse=False, max_frame_num_to_track=frames))
    sam2_masks, samurai_masks = results
    assert sorted(sam2_masks) == sorted(samurai_masks) == list(range(10, 10 + frames + 1))
    for frame_idx, masks in sam2_masks.items():
        assert torch.equal(masks, samurai_masks[frame_idx]), frame_idx


@pytest.mark.slow
def test_prompted_frames_use_samurai_presence_threshold(fixtures_dir, session, monkeypatch):
    """As published, ``min_obj_score_logits`` (-1) decides presence on prompted frames too: an
    object the decoder scores -0.5 keeps its mask under SAMURAI; SAM 2 (threshold 0) blanks it."""
    from sam2.modeling.sam2_base import NO_OBJ_SCORE

    outputs = {}
    for cls, overrides in [
        (SharedFeatureVideoPredictor, None),
        (SamuraiVideoPredictor, samurai_model_overrides(DEFAULTS)),
    ]:
        model = _build(fixtures_dir, cls, overrides)
        decode = model.sam_mask_decoder.forward

        def doubtful(*args, decode=decode, **kwargs):
            masks, ious, tokens, scores = decode(*args, **kwargs)
            return masks, ious, tokens, torch.full_like(scores, -0.5)

        monkeypatch.setattr(model.sam_mask_decoder, "forward", doubtful)
        state = model.init_state(session)
        points, labels = np.array([[300.0, 200.0]], dtype=np.float32), np.array([1], np.int32)
        _, _, masks = model.add_new_points_or_box(state, 3, 1, points=points, labels=labels)
        outputs[cls] = masks
    sam2_masks, samurai_masks = outputs[SharedFeatureVideoPredictor], outputs[SamuraiVideoPredictor]
    assert (sam2_masks <= NO_OBJ_SCORE / 2).all()  # absent: hard-set to "no object"
    assert (samurai_masks > NO_OBJ_SCORE / 2).all()  # present: the decoder's own logits


@pytest.mark.slow
def test_samurai_turns_on_multimask_tracking(fixtures_dir):
    model = _build(
        fixtures_dir,
        SamuraiVideoPredictor,
        {
            **samurai_model_overrides(DEFAULTS),
            "multimask_output_for_tracking": False,
            "multimask_min_pt_num": 1,
        },
    )
    assert model.multimask_output_in_sam and model.multimask_output_for_tracking
    assert model.multimask_min_pt_num == 0
    assert model.samurai == DEFAULTS


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["mask", "point"])
def test_shared_session_equals_sam2_own_state_per_expression(
    fixtures_dir, samurai_model, tmp_path, default_config, prompt
):
    """SAMURAI on one shared session (frames decoded once, features cached, ``reset_state``
    between expressions) gives the masks of SAMURAI on SAM 2's own ``init_state`` from the frame
    folder, afresh for every expression (SAM 2's frame loading and feature handling)."""
    num_frames = 16
    source = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    for path in sorted(source.glob("*.jpg"))[:num_frames]:
        shutil.copy(path, tmp_path / path.name)
    legacy = read_legacy_npz(fixtures_dir / "refine_tiny" / "legacy_stage1" / "videoA.npz")
    options = dataclasses.replace(
        default_config.stage2, tracker=Tracker.samurai, prompt=PromptKind(prompt)
    )
    refiner = Refiner(Sam2Tracker(samurai_model, options), options)
    session = refiner.open_video(sorted(tmp_path.glob("*.jpg")), video_id="videoA")
    for exp_id in ("0", "4"):  # 2 objects; 3 objects, two prompted on one frame
        arrays = legacy.expressions[exp_id]
        proposals = {
            "scores": arrays["scores"][:num_frames],
            "boxes": arrays["boxes"][:num_frames],
            "masks": upsample_mask_logits(arrays["masks"][:num_frames], legacy.size),
        }
        shared = refiner.refine(session, **proposals, exp_id=exp_id)
        alone = reference_refine(samurai_model, tmp_path, **proposals, options=options)
        assert shared.num_objects >= 2 and shared.masks.any()
        assert np.array_equal(shared.masks, alone.masks), exp_id
