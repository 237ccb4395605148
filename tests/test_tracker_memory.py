"""Long videos: what the SAM 2 trackers hold is bounded in the number of frames, and changes no mask.

On the tiny SAM 2.1 of the fixtures (256 px) and a generated clip of :data:`NUM_FRAMES` small
frames, with ``stage2.feature_cache_frames`` = :data:`CACHE_FRAMES`:

- frames are decoded when the image encoder needs them, from a sequence that is only indexed
  (never walked whole), and an unreadable or odd frame still names the video and the file;
- the shared feature cache never holds more than the bound, and a pass never holds more than a
  fixed number of tracked outputs per object, whatever the clip's length;
- the masks and scores are bit-identical to SAM 2's own propagation (which keeps every frame and
  every output), for a mask, a box and clicks on three frames late in the clip (a long reverse
  pass), with memories of two shapes, and to SAMURAI keeping everything.

SAM 3's counterpart is in ``tests/test_sam3.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.sam2_reference import build_reference_predictor
from PIL import Image
from sam2.utils.misc import load_video_frames

from stage2_sam2_refine import samurai
from stage2_sam2_refine.options import Tracker
from stage2_sam2_refine.predictor import (
    SharedFeatureVideoPredictor,
    VideoSession,
    check_frame_headers,
)
from stage2_sam2_refine.sam2_tracker import add_prompt
from stage2_sam2_refine.tracker import ObjectPrompt, build_tracker, propagation_order

NUM_FRAMES, HEIGHT, WIDTH = 56, 48, 64
CACHE_FRAMES = 8  # stage2.feature_cache_frames here: far fewer than the clip's frames
CPU = torch.device("cpu")

# SAM 2 memory settings tried (shorter than SAM 2.1's, so that a short clip goes far beyond them),
# and how far back SAM 2 then reads tracked outputs: the previous frame and 5 more spatial
# memories every `stride` frames (1 + 5 * stride back: tiny SAM 2.1 has num_maskmem 7), and the
# object pointers of `max_obj_ptrs_in_encoder - 1` frames. (SAM 2.1's own: stride 1 and 16
# pointers, 15 frames back.)
MEMORIES = {
    "pointers": ({"max_obj_ptrs_in_encoder": 8}, 7),  # the pointers reach furthest
    "strided": ({"memory_temporal_stride_for_eval": 2, "max_obj_ptrs_in_encoder": 4}, 11),
}


def _square(top: int, left: int, size: int = 12) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# One expression: three objects prompted on three frames, with a mask, a box and clicks, in the
# second half of the clip (so that the reverse pass is long).
PROMPTS = [
    ObjectPrompt(obj_id=3, frame_idx=28, box=np.array([30, 6, 44, 20], np.float32)),
    ObjectPrompt(obj_id=1, frame_idx=20, mask=_square(8, 20)),
    ObjectPrompt(
        obj_id=0,
        frame_idx=30,
        points=np.array([[46, 14], [48, 17], [5, 5]], np.float32),
        labels=np.array([1, 1, 0], np.int32),
    ),
]
FIRST_PROMPTED = 20


def _pixels(t: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``t``: two bright squares moving over noise (one right and back, one down)."""
    pixels = rng.integers(0, 80, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    x = 4 + abs((t % 80) - 40)  # 4 .. 44
    pixels[8:20, x : x + 12] = (230, 200, 60)
    y = 2 + (t // 3) % 30  # 2 .. 31
    pixels[y : y + 12, 40:52] = (60, 220, 230)
    return pixels


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The clip as JPEGs named by index (SAM 2's folder loader reads them)."""
    folder = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    paths = []
    for t in range(NUM_FRAMES):
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(_pixels(t, rng)).save(path, quality=95)
        paths.append(path)
    return paths


class LazyClip(Sequence):
    """The clip as a sequence that decodes a frame when indexed (as a lazy video reader would),
    counts those reads, and fails if anything walks it whole."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise AssertionError(f"the clip was sliced ({index!r})")
        self.reads.append(index)
        with Image.open(self.paths[index]) as img:
            return img.convert("RGB")

    def __iter__(self) -> Iterator[Image.Image]:
        raise AssertionError("the whole clip was walked")


@pytest.fixture(scope="module")
def stock(fixtures_dir: Path):
    """SAM 2's own predictor (``build_sam2_video_predictor``), the per-expression reference."""
    tiny = fixtures_dir / "sam2_tiny"
    return build_reference_predictor(tiny / "tiny_sam2.1.yaml", tiny / "weights_propagating.pt")


@pytest.fixture(scope="module")
def trackers(tiny_stage2):
    """One tiny tracker per name, its features cache bounded to :data:`CACHE_FRAMES`."""
    return {
        name: build_tracker(tiny_stage2(tracker=Tracker(name), feature_cache_frames=CACHE_FRAMES))
        for name in ("sam2", "samurai")
    }


def _memory(monkeypatch: pytest.MonkeyPatch, memory: str, *predictors) -> int:
    """Give ``predictors`` the memory settings of :data:`MEMORIES` ``[memory]`` (plain attributes
    SAM 2 reads on every frame); returns how far back SAM 2 then reads."""
    settings, reach = MEMORIES[memory]
    for predictor in predictors:
        for name, value in settings.items():
            monkeypatch.setattr(predictor, name, value)
    return reach


@torch.inference_mode()
def keeping_everything(predictor, video, prompts) -> list[tuple]:
    """``(frame_idx, reverse, masks [K, H, W] bool, scores [K])`` per step of SAM 2's own
    ``init_state`` (``video``: a frame folder, or an unbounded session), prompts, and
    ``propagate_in_video`` forward then in reverse, no output ever dropped."""
    state = predictor.init_state(video)
    for prompt in prompts:
        add_prompt(predictor, state, prompt)
    steps = []
    for reverse in (False, True):
        for t, _, logits in predictor.propagate_in_video(state, reverse=reverse):
            scores = []
            for outputs in state["output_dict_per_obj"].values():
                out = outputs["non_cond_frame_outputs"].get(t) or outputs["cond_frame_outputs"][t]
                scores.append(float(out["object_score_logits"].reshape(-1)[0]))
            masks = (logits > 0).squeeze(1).numpy()
            steps.append((t, reverse, masks, np.asarray(scores, np.float32)))
    return steps


class Held:
    """The most a tracker's session held while tracking, measured right before each step's
    outputs out of reach are dropped (when a pass holds the most): image features cached, and
    tracked outputs of one object."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, predictor, video: VideoSession) -> None:
        self.features = self.outputs = 0
        drop = predictor.drop_unreachable_outputs

        def measuring(state, **kwargs):
            per_object = [
                len(o["non_cond_frame_outputs"]) for o in state["output_dict_per_obj"].values()
            ]
            self.outputs = max(self.outputs, *per_object)
            self.features = max(self.features, len(video.features))
            return drop(state, **kwargs)

        monkeypatch.setattr(predictor, "drop_unreachable_outputs", measuring)


def assert_same_steps(ours, reference) -> None:
    assert [(f.frame_idx, f.reverse) for f in ours] == [(t, r) for t, r, _, _ in reference]
    for frame, (t, reverse, masks, scores) in zip(ours, reference, strict=True):
        assert np.array_equal(frame.masks, masks), (t, reverse)
        assert np.array_equal(frame.scores, scores), (t, reverse)


@pytest.mark.slow
@pytest.mark.parametrize("memory", list(MEMORIES))
def test_bounded_sam2_equals_sam2_keeping_everything(memory, trackers, stock, clip, monkeypatch):
    """A bounded session (a lazy clip, 8 frames of features, outputs out of reach dropped) gives
    SAM 2's own masks and scores; what it holds stays within the bound, far below what SAM 2
    holds."""
    tracker = trackers["sam2"]
    reach = _memory(monkeypatch, memory, tracker.predictor, stock)
    assert tracker.predictor.memory_reach() == reach
    frames = LazyClip(clip)
    session = tracker.open_video(frames, video_id="clip")
    held = Held(monkeypatch, tracker.predictor, session.video)
    ours = list(session.track(PROMPTS))
    assert [(f.frame_idx, f.reverse) for f in ours] == propagation_order(
        NUM_FRAMES, [FIRST_PROMPTED]
    )
    masks = np.stack([f.masks for f in ours])
    assert masks.shape == (NUM_FRAMES + 1, 3, HEIGHT, WIDTH)  # f0 twice
    assert 0 < masks.mean() < 0.5, "random weights that track nothing test nothing"
    assert_same_steps(ours, keeping_everything(stock, str(clip[0].parent), PROMPTS))
    # at most: the frames within reach of the last one, the new one, and (in the forward pass)
    # those the reverse pass will read; SAM 2 itself holds every tracked frame (55 of object 1)
    assert held.outputs == 2 * reach + 1 < NUM_FRAMES - FIRST_PROMPTED - 1
    assert held.features == CACHE_FRAMES
    # frames dropped from the cache were decoded again (one more read: the size, on opening)
    assert len(frames.reads) == session.video.decoded_frames + 1 > NUM_FRAMES


@pytest.mark.slow
def test_bounded_samurai_equals_samurai_keeping_everything(trackers, clip, monkeypatch):
    """SAMURAI selects memories among admitted frames at any distance: what it may still select
    (the pointers' window and the 6 most recent admitted frames) is kept, and the masks are those
    of SAMURAI keeping every output and every frame's features.

    The tiny model's scores pass SAMURAI's thresholds on every frame; here only every fifth frame
    is admitted (a rule on each frame alone, as the thresholds on its own scores), so that the
    selection reaches beyond the pointers' window."""
    tracker = trackers["samurai"]
    predictor: SharedFeatureVideoPredictor = tracker.predictor
    _memory(monkeypatch, "pointers", predictor)  # 7 frames of pointers, 7 admitted ones searched
    monkeypatch.setattr(
        samurai, "admits_to_memory", lambda candidate, **_: candidate.frame_idx % 5 == 0
    )
    session = tracker.open_video(LazyClip(clip), video_id="clip")
    held = Held(monkeypatch, predictor, session.video)
    unbounded = predictor.open_video(clip, video_id="clip")  # every frame's features
    window = predictor.max_obj_ptrs_in_encoder - 1
    admitted = predictor.num_maskmem - 1
    far: list[int] = []  # frames kept as admitted memories only (beyond the pointers' window)
    in_reach = predictor.tracked_frames_in_reach

    def recording(outputs, *, frame_idx, reverse):
        kept = in_reach(outputs, frame_idx=frame_idx, reverse=reverse)
        far.extend(t for t in kept if (frame_idx - t) * (-1 if reverse else 1) >= window)
        return kept

    monkeypatch.setattr(predictor, "tracked_frames_in_reach", recording)
    ours = list(session.track(PROMPTS))
    assert_same_steps(ours, keeping_everything(predictor, unbounded, PROMPTS))
    assert far, "no admitted frame beyond the pointers' window: nothing tested the selection"
    assert held.outputs <= 2 * (window + admitted) + 1 < NUM_FRAMES - FIRST_PROMPTED - 1
    assert held.features == CACHE_FRAMES


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_frames_are_decoded_when_encoded(fixtures_dir, tiny_stage2, clip):
    """Opening reads the first frame only; each frame is decoded when encoded, and with every
    frame's features cached, once for all expressions and passes."""
    tracker = build_tracker(tiny_stage2(feature_cache_frames=None))
    frames = LazyClip(clip[:24])
    session = tracker.open_video(frames, video_id="clip")
    assert frames.reads == [0] and session.video.decoded_frames == 0
    assert (session.num_frames, session.size) == (24, (HEIGHT, WIDTH))
    prompts = [ObjectPrompt(obj_id=0, frame_idx=12, mask=_square(8, 20))]
    for _ in range(2):
        assert len(list(session.track(prompts))) == len(propagation_order(24, [12]))
    assert sorted(frames.reads) == [0, *range(24)]  # each frame once, plus the size check
    assert sorted(session.video.features) == list(range(24))


def _video(
    frames, *, image_size: int = 32, feature_cache_frames: int | None = None
) -> VideoSession:
    """A session of ``frames`` (48x64) as ``open_video`` makes it on the CPU."""
    cpu = torch.device("cpu")
    return VideoSession(
        video_id="videoX",
        frames=frames,
        image_size=image_size,
        height=HEIGHT,
        width=WIDTH,
        device=cpu,
        offload_video_to_cpu=False,
        offload_state_to_cpu=False,
        feature_device=cpu,
        feature_cache_frames=feature_cache_frames,
    )


def test_a_frame_is_decoded_as_sam2_loads_it(clip):
    """A frame decoded on demand equals SAM 2's own loader's (the whole folder, normalised)."""
    theirs, height, width = load_video_frames(
        str(clip[0].parent), image_size=64, offload_video_to_cpu=True, compute_device=CPU
    )
    assert (height, width) == (HEIGHT, WIDTH)
    video = _video(LazyClip(clip), image_size=64)
    for t in (0, 17, NUM_FRAMES - 1):
        assert torch.equal(video[t], theirs[t])
    assert video.decoded_frames == 3
    with pytest.raises(IndexError):
        video[NUM_FRAMES]


def test_odd_frames_name_the_video_and_the_file(clip, tmp_path):
    """Frames held in a list are checked when the video is opened (file headers only); frames of
    a lazy sequence when they are decoded. Either way the message names the video and the file."""
    small = tmp_path / "small.jpg"
    Image.new("RGB", (10, 20)).save(small)
    missing = tmp_path / "missing.jpg"
    assert check_frame_headers(clip, video_id="videoX") == (HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=r"'videoX': frame .*small.jpg is 10x20, the first frame"):
        check_frame_headers([clip[0], small], video_id="videoX")
    with pytest.raises(OSError, match=r"'videoX': cannot read frame .*missing.jpg"):
        check_frame_headers((clip[0], missing), video_id="videoX")
    with pytest.raises(ValueError, match="'videoX': no frames"):
        check_frame_headers([], video_id="videoX")

    lazy = LazyClip([clip[0], small])
    assert check_frame_headers(lazy, video_id="videoX") == (HEIGHT, WIDTH)
    assert lazy.reads == [0]  # a lazy sequence is not walked
    with pytest.raises(ValueError, match=r"'videoX': frame #1 is 10x20, the first frame is 64x48"):
        _video(lazy)[1]
    with pytest.raises(OSError, match=r"'videoX': cannot read frame .*missing.jpg"):
        _video(LazyPaths([clip[0], missing]))[1]


class LazyPaths(Sequence):
    """Paths handed out one by one (not a list: not checked up front)."""

    def __init__(self, paths) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]


# --------------------------------------------------------------------------------------------------
# The feature cache
# --------------------------------------------------------------------------------------------------


def test_feature_cache_drops_the_least_recently_used_frame(clip):
    video = _video(clip, feature_cache_frames=3)
    pyramid = {"vision_pos_enc": [torch.zeros(1)]}
    for t in (0, 1, 2):
        video.keep(t, {**pyramid, "backbone_fpn": [torch.full((1,), float(t))]})
    assert video.backbone_out(0)["backbone_fpn"][0].item() == 0  # 0 is now the most recent
    video.keep(3, {**pyramid, "backbone_fpn": [torch.full((1,), 3.0)]})
    assert list(video.features) == [2, 0, 3]  # 1 was the least recently used
    assert video.backbone_out(1) is None
    unbounded = _video(clip)
    for t in range(NUM_FRAMES):
        unbounded.keep(t, {**pyramid, "backbone_fpn": [torch.zeros(1)]})
    assert len(unbounded.features) == NUM_FRAMES
