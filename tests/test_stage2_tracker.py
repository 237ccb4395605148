"""The stage-2 tracker interface: the name table, prompts, the propagation order, and the SAM 2 and
SAMURAI trackers' sessions (one SAM 2 state per video, nothing carried between expressions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from stage2_sam2_refine.options import Tracker
from stage2_sam2_refine.tracker import (
    TRACKERS,
    ObjectPrompt,
    build_tracker,
    model_problems,
    propagation_order,
)

NUM_FRAMES = 12  # the first frames of videoA
HINT = "run `bash download_ckpts.sh`"


def test_propagation_order_forward_then_reverse():
    assert propagation_order(5, [3, 2]) == [
        (2, False),
        (3, False),
        (4, False),
        (2, True),
        (1, True),
        (0, True),
    ]
    assert propagation_order(3, [0, 2]) == [(0, False), (1, False), (2, False)]  # no reverse pass
    for prompted in ([], [3], [-1]):
        with pytest.raises(ValueError):
            propagation_order(3, prompted)


def test_a_prompt_is_one_mask_box_or_clicks():
    mask = np.zeros((4, 5), dtype=bool)
    box = np.array([0, 0, 2, 2], dtype=np.float32)
    points, labels = np.zeros((1, 2), np.float32), np.ones(1, np.int32)
    assert ObjectPrompt(0, 1, mask=mask).box is None
    ObjectPrompt(0, 1, points=points, labels=labels)
    for kinds in ({}, {"mask": mask, "box": box}):
        with pytest.raises(ValueError, match="one of a mask, a box or points"):
            ObjectPrompt(3, 1, **kinds)
    with pytest.raises(ValueError, match="points need labels"):
        ObjectPrompt(3, 1, box=box, labels=labels)


def test_every_configured_tracker_has_a_module():
    assert set(TRACKERS) == {tracker.value for tracker in Tracker}
    for name, target in TRACKERS.items():
        module_name, _, function = target.partition(":")
        module = __import__(module_name, fromlist=[function])
        assert callable(getattr(module, function)), name
        assert callable(module.model_problems), name


@pytest.mark.parametrize("tracker", ["sam2", "samurai"])  # the trackers on SAM 2's files
def test_model_problems_are_found_without_loading(tiny_stage2, tmp_path, tracker):
    assert model_problems(tiny_stage2(tracker=Tracker(tracker)), hint=HINT) == []
    missing = tmp_path / "sam2.pt"
    bad = dataclasses.replace(
        tiny_stage2(tracker=Tracker(tracker)), model="sam2.1_hiera_xl", checkpoint=str(missing)
    )
    first, second = model_problems(bad, hint=HINT)
    assert first.startswith("stage2.model=sam2.1_hiera_xl: unknown SAM 2 model")
    assert second == f"stage2.checkpoint={missing}: not found; {HINT}, or point " + (
        "stage2.checkpoint= at your file"
    )


def test_an_unknown_tracker_is_one_line(tiny_stage2):
    options = dataclasses.replace(tiny_stage2(), tracker="sam9")
    message = f"stage2.tracker=sam9: unknown tracker; expected one of {', '.join(TRACKERS)}"
    assert message.startswith("stage2.tracker=sam9: unknown tracker; expected one of sam2, samurai")
    assert model_problems(options, hint=HINT) == [message]
    with pytest.raises(ValueError, match=message):
        build_tracker(options)


# --------------------------------------------------------------------------------------------------
# Sessions on the tiny SAM 2
# --------------------------------------------------------------------------------------------------


def _frames(fixtures_dir: Path) -> list[Path]:
    folder = fixtures_dir / "refine_tiny" / "mevis" / "JPEGImages" / "videoA"
    return sorted(folder.glob("*.jpg"))[:NUM_FRAMES]


def _disc(cy: int, cx: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:540, :960]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


FIRST = [  # two objects, prompted on different frames, a mask and clicks
    ObjectPrompt(0, 4, mask=_disc(200, 300, 80)),
    ObjectPrompt(
        1,
        6,
        points=np.array([[700.0, 300.0], [720.0, 310.0]], np.float32),
        labels=np.ones(2, np.int32),
    ),
]
SECOND = [ObjectPrompt(7, 2, box=np.array([250.0, 150.0, 400.0, 280.0], np.float32))]


def _track(session, prompts) -> list:
    steps = []
    for step in session.track(prompts):
        # each step runs in inference mode; the caller's code between steps does not
        assert not torch.is_inference_mode_enabled()
        steps.append(step)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["sam2", "samurai"])
def test_a_session_inits_sam2_once_and_forgets_each_expression(
    fixtures_dir, tiny_stage2, monkeypatch, tracker
):
    """One SAM 2 state per video (``init_state`` once, ``reset_state`` per expression); an
    expression tracked after another gives what it gives on a fresh session."""
    model = build_tracker(tiny_stage2(tracker=Tracker(tracker)))
    predictor = model.predictor
    calls: list[str] = []
    for name in ("init_state", "reset_state"):
        method = getattr(predictor, name)
        monkeypatch.setattr(
            predictor, name, lambda *a, _m=method, _n=name, **k: (calls.append(_n), _m(*a, **k))[1]
        )
    session = model.open_video(_frames(fixtures_dir), video_id="videoA")
    assert (session.num_frames, session.size) == (NUM_FRAMES, (540, 960))
    first = _track(session, FIRST)
    second = _track(session, SECOND)
    assert calls == ["init_state", "reset_state", "reset_state"]

    assert [(s.frame_idx, s.reverse) for s in first] == propagation_order(NUM_FRAMES, [4, 6])
    for step in first:
        assert step.masks.shape == (2, 540, 960) and step.masks.dtype == bool
        assert step.scores.shape == (2,) and step.scores.dtype == np.float32
    assert any(step.masks.any() for step in first)

    fresh = _track(model.open_video(_frames(fixtures_dir), video_id="videoA"), SECOND)
    assert [(s.frame_idx, s.reverse) for s in second] == propagation_order(NUM_FRAMES, [2])
    for ours, theirs in zip(second, fresh, strict=True):
        assert np.array_equal(ours.masks, theirs.masks)
        assert np.array_equal(ours.scores, theirs.scores)
    with pytest.raises(ValueError, match="no prompts"):
        session.track([])
