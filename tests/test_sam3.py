"""SAM 3's tracker (``stage2.tracker=sam3``) on a tiny random-weight SAM 3 generated here.

The tiny model shrinks SAM 3's ViT and keeps the rest of the released configuration (transformers
5.23's tracker needs the 256-wide hidden sizes, the 64-wide memory and the 1008 px input), so a
frame costs seconds on a CPU: the clips have three frames. The reference is transformers' own
video API on a fresh session per expression, as its documentation uses it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import real_size
from referdino_plus.config import compose_config, load_config, to_yaml
from referdino_plus.pipeline import stage_fingerprints
from rvos import intermediates as im
from rvos.checkpoints import CheckpointError
from rvos.options import OptionError
from stage2_sam2_refine import sam3
from stage2_sam2_refine.tracker import ObjectPrompt, build_tracker, propagation_order

NUM_FRAMES, HEIGHT, WIDTH = 3, 48, 64


def tiny_sam3_config():
    """SAM 3's tracker with a 2-layer, 32-wide ViT and one memory-attention and fuser layer."""
    from transformers import Sam3TrackerVideoConfig

    backbone = {
        "model_type": "sam3_vit_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "global_attn_indexes": [1],
    }
    return Sam3TrackerVideoConfig(
        vision_config={"model_type": "sam3_vision_model", "backbone_config": backbone},
        mask_decoder_config={"mlp_dim": 64, "iou_head_hidden_dim": 32},
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_fuser_num_layers=1,
        memory_fuser_intermediate_dim=64,
    )


@pytest.fixture(scope="session")
def tiny_sam3_dir(tmp_path_factory) -> Path:
    """A transformers folder of the tiny tracker (config.json, model.safetensors, processor)."""
    return real_size.write_sam3(tmp_path_factory.mktemp("tiny_sam3"), tiny_sam3_config())


@pytest.fixture(scope="session")
def sam3_options(tiny_sam3_dir):
    return dataclasses.replace(
        load_config(["stage2.tracker=sam3"]).stage2, checkpoint=str(tiny_sam3_dir)
    )


@pytest.fixture(scope="module")
def tracker(sam3_options):
    return build_tracker(sam3_options, device="cpu")


def moving_square(num_frames: int, seed: int) -> list[Image.Image]:
    """``num_frames`` frames of a bright square moving right over noise."""
    rng = np.random.default_rng(seed)
    images = []
    for t in range(num_frames):
        pixels = rng.integers(0, 80, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        pixels[12:32, 10 + 6 * t : 30 + 6 * t] = 230
        images.append(Image.fromarray(pixels))
    return images


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    """Three frames of a bright square moving right over noise."""
    return moving_square(NUM_FRAMES, seed=0)


def square_mask(top: int, left: int, size: int = 20) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# One expression's prompts per case; together: every kind, objects on different frames given out
# of frame order, a reverse pass (earliest prompt on frame 1) and none (on frame 0).
PROMPTS = {
    "mask": [ObjectPrompt(obj_id=0, frame_idx=1, mask=square_mask(12, 16))],
    "box": [ObjectPrompt(obj_id=0, frame_idx=0, box=np.array([8, 10, 32, 34], np.float32))],
    "points": [
        ObjectPrompt(
            obj_id=0,
            frame_idx=1,
            points=np.array([[25, 20], [30, 24], [55, 40]], np.float32),
            labels=np.array([1, 1, 0], np.int32),
        )
    ],
    "two objects": [
        ObjectPrompt(obj_id=5, frame_idx=2, mask=square_mask(12, 22)),
        ObjectPrompt(
            obj_id=2,
            frame_idx=1,
            points=np.array([[40, 40]], np.float32),
            labels=np.array([1], np.int32),
        ),
    ],
}


def transformers_reference(model, processor, frames, prompts) -> list[tuple]:
    """``(frame_idx, reverse, masks [K, H, W] bool, scores [K])`` from transformers' documented
    video API on a fresh session: each prompt added and its frame run, then propagation forward
    and in reverse from the earliest prompted frame, masks post-processed to the frame size."""
    session = processor.init_video_session(video=frames, inference_device="cpu")
    for prompt in prompts:
        if prompt.mask is not None:
            inputs = {"input_masks": prompt.mask}
        elif prompt.box is not None:
            inputs = {"input_boxes": [[prompt.box.tolist()]]}
        else:
            inputs = {
                "input_points": [[prompt.points.tolist()]],
                "input_labels": [[prompt.labels.tolist()]],
            }
        processor.add_inputs_to_inference_session(
            inference_session=session, frame_idx=prompt.frame_idx, obj_ids=prompt.obj_id, **inputs
        )
        model(inference_session=session, frame_idx=prompt.frame_idx)
    steps = []
    for reverse in (False, True):
        for output in model.propagate_in_video_iterator(session, reverse=reverse):
            masks = processor.post_process_masks(
                [output.pred_masks], original_sizes=[[HEIGHT, WIDTH]]
            )[0]
            scores = output.object_score_logits.reshape(-1)
            steps.append((output.frame_idx, reverse, masks[:, 0].numpy(), scores.numpy()))
    return steps


class BackboneCalls:
    """Counts the vision encoder's forward passes while in use."""

    def __init__(self, model) -> None:
        self.count = 0
        self._handle = model.vision_encoder.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def shared_session_run(tracker, frames):
    """Every case of :data:`PROMPTS` tracked in turn in one opened video: ``(results, backbone
    passes)``."""
    calls = BackboneCalls(tracker.model)
    try:
        session = tracker.open_video(frames, video_id="clip")
        results = {name: list(session.track(prompts)) for name, prompts in PROMPTS.items()}
    finally:
        calls.close()
    return results, calls.count


def assert_same_steps(ours, reference) -> None:
    assert [(f.frame_idx, f.reverse) for f in ours] == [(t, r) for t, r, _, _ in reference]
    for frame, (_, _, masks, scores) in zip(ours, reference, strict=True):
        assert frame.masks.dtype == bool and frame.masks.shape == masks.shape
        np.testing.assert_array_equal(frame.masks, masks)
        np.testing.assert_array_equal(frame.scores, scores)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PROMPTS))
def test_masks_equal_transformers_own_propagation(case, tracker, frames, shared_session_run):
    """Each expression of the shared session equals transformers' run on a fresh session."""
    prompts = PROMPTS[case]
    ours = shared_session_run[0][case]
    order = propagation_order(NUM_FRAMES, [p.frame_idx for p in prompts])
    assert [(f.frame_idx, f.reverse) for f in ours] == order
    masks = np.stack([f.masks for f in ours])
    assert masks.shape == (len(order), len(prompts), HEIGHT, WIDTH)
    assert 0 < masks.mean() < 1, "random weights that segment nothing or everything test nothing"
    reference = transformers_reference(tracker.model, tracker.processor, frames, prompts)
    assert_same_steps(ours, reference)


@pytest.mark.slow
def test_sharing_features_across_expressions_changes_nothing(tracker, frames, shared_session_run):
    """The backbone runs once per frame for all expressions and both directions, and an
    expression after others gives what it gives alone in a freshly opened video (which encodes
    every frame again)."""
    results, shared_passes = shared_session_run
    assert shared_passes == NUM_FRAMES
    calls = BackboneCalls(tracker.model)
    try:
        alone = list(tracker.open_video(frames, video_id="clip").track(PROMPTS["two objects"]))
    finally:
        calls.close()
    assert calls.count == NUM_FRAMES
    shared = results["two objects"]
    assert [(f.frame_idx, f.reverse) for f in alone] == [(f.frame_idx, f.reverse) for f in shared]
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.slow
def test_prompts_that_do_not_fit_the_video_are_refused(tracker, frames):
    """Checked before any frame is computed."""
    session = tracker.open_video(frames, video_id="clip")
    mask = square_mask(0, 0)
    cases = {
        "one prompt per object": [
            ObjectPrompt(obj_id=1, frame_idx=0, mask=mask),
            ObjectPrompt(obj_id=1, frame_idx=1, mask=mask),
        ],
        r"mask is \(10, 10\)": [ObjectPrompt(obj_id=1, frame_idx=0, mask=np.ones((10, 10), bool))],
        "outside a video of 3": [ObjectPrompt(obj_id=1, frame_idx=3, mask=mask)],
        "no prompted frame": [],
    }
    for message, prompts in cases.items():
        with pytest.raises(ValueError, match=message):
            next(session.track(prompts))


# ----------------------------------------------------------------------------- long videos

LONG_FRAMES = 6
BOUNDED_PROMPTS = [  # two objects on two frames; the reverse pass from frame 2 reads frame 3
    ObjectPrompt(
        obj_id=4,
        frame_idx=4,
        points=np.array([[44, 22]], np.float32),
        labels=np.array([1], np.int32),
    ),
    ObjectPrompt(obj_id=1, frame_idx=2, mask=square_mask(12, 22)),
]


@pytest.fixture(scope="module")
def long_frames() -> list[Image.Image]:
    """Six frames of a bright square moving right over noise."""
    return moving_square(LONG_FRAMES, seed=1)


class IndexedFrames(Sequence):
    """Frames handed out by index only (counted); walking them whole fails."""

    def __init__(self, images: list[Image.Image]) -> None:
        self.images = images
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise AssertionError(f"the clip was sliced ({index!r})")
        self.reads.append(index)
        return self.images[index]

    def __iter__(self):
        raise AssertionError("the whole clip was walked")


def test_frame_sizes_are_checked_up_front_in_a_list(frames, tmp_path):
    """A list of frames is checked when the video is opened (file headers only); a sequence that
    decodes frames when indexed only for its first frame (the others when decoded)."""
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 20)).save(small)
    assert sam3.video_size(frames, video_id="clip") == (WIDTH, HEIGHT)
    with pytest.raises(ValueError, match=r"'clip': frame .*small.png is 10x20, the first frame"):
        sam3.video_size([frames[0], small], video_id="clip")
    with pytest.raises(OSError, match=r"'clip': cannot read frame .*missing.png"):
        sam3.video_size((frames[0], tmp_path / "missing.png"), video_id="clip")
    with pytest.raises(ValueError, match="'clip': no frames"):
        sam3.video_size([], video_id="clip")
    lazy = IndexedFrames([frames[0], Image.new("RGB", (10, 20))])
    assert sam3.video_size(lazy, video_id="clip") == (WIDTH, HEIGHT) and lazy.reads == [0]


@pytest.mark.slow
def test_a_bounded_session_equals_transformers_own_propagation(
    tracker, sam3_options, long_frames, monkeypatch
):
    """Frames processed when the backbone needs them, two frames of features, tracked outputs
    out of reach dropped (SAM 3's memory shortened to the previous frame, so that six frames show
    it): masks and scores are those of transformers' own propagation, which keeps every processed
    frame and every output."""
    model = tracker.model
    monkeypatch.setattr(model, "num_maskmem", 2)  # read on every frame, as the next one
    monkeypatch.setattr(model.config, "max_object_pointers_in_encoder", 2)
    assert sam3.memory_reach(model) == 1
    options = dataclasses.replace(sam3_options, feature_cache_frames=2)
    frames = IndexedFrames(long_frames)
    session = sam3.Sam3Tracker(model, tracker.processor, options).open_video(
        frames, video_id="clip"
    )
    assert frames.reads == [0] and session.num_frames == LONG_FRAMES
    inference_session = session.inference_session
    held = {"outputs": 0, "features": 0}
    drop = session.drop_unreachable_outputs

    def measuring(**kwargs):
        per_object = inference_session.output_dict_per_obj.values()
        outputs = max(len(o["non_cond_frame_outputs"]) for o in per_object)
        held["outputs"] = max(held["outputs"], outputs)
        held["features"] = max(held["features"], len(inference_session.cache.features))
        return drop(**kwargs)

    monkeypatch.setattr(session, "drop_unreachable_outputs", measuring)
    calls = BackboneCalls(model)
    try:
        ours = list(session.track(BOUNDED_PROMPTS))
    finally:
        calls.close()
    masks = np.stack([f.masks for f in ours])
    assert 0 < masks.mean() < 1, "random weights that segment nothing or everything test nothing"
    reference = transformers_reference(model, tracker.processor, long_frames, BOUNDED_PROMPTS)
    assert_same_steps(ours, reference)
    # the frame within reach, the new one, and the one the reverse pass will read (transformers
    # holds every tracked frame: 5 of object 4)
    assert held == {"outputs": 3, "features": 2}
    # frames dropped from the cache were processed and encoded again
    assert inference_session.processed_frames.decoded_frames == calls.count > LONG_FRAMES


# ----------------------------------------------------------------------------- weights


def one_line(text: str | None) -> str:
    assert text is not None and "\n" not in text
    return text


def test_released_weights_are_the_default_and_a_folder_overrides(tmp_path):
    cfg = load_config(["stage2.tracker=sam3"])
    assert (cfg.stage2.model, cfg.stage2.checkpoint) == ("sam3", "hf://facebook/sam3/")
    cfg = load_config(["stage2.tracker=sam3", f"stage2.checkpoint={tmp_path}"])
    assert (cfg.stage2.model, cfg.stage2.checkpoint) == ("sam3", str(tmp_path))
    sam2 = load_config()
    assert (sam2.stage2.model, sam2.stage2.checkpoint) == (
        "sam2.1_hiera_l",
        "hf://facebook/sam2.1-hiera-large/sam2.1_hiera_large.pt",
    )
    saved = to_yaml(compose_config(["stage2.tracker=sam3"]))  # as work_dir/config.yaml
    assert "${" not in saved
    stage2 = load_config([f"stage2.checkpoint={tmp_path}", "stage2.tracker=sam3"]).stage2
    assert stage2.checkpoint == str(tmp_path)


def test_every_tracker_needs_released_weights():
    stage2 = load_config().stage2
    released = {k: v for k, v in stage2.released.items() if k != "sam3"}
    with pytest.raises(OptionError, match="stage2.released: expected one entry per tracker"):
        dataclasses.replace(stage2, released=released)


def test_existing_sam2_records_keep_their_fingerprint():
    """A sam2 run's stage-2 fingerprint is still made of the keys it had before SAM 3 came
    (``released`` and other trackers' sections are left out), and SAM 3's is its own."""
    cfg = load_config()
    plain = json.loads(json.dumps(dataclasses.asdict(cfg.stage2), default=str))
    before = {
        k: v
        for k, v in plain.items()
        if k
        not in {
            "released",
            "feature_cache_device",
            "feature_cache_frames",
            "offload_video_to_cpu",
            "offload_state_to_cpu",
            "retry_offloaded_on_oom",
        }
    }
    fps = stage_fingerprints(cfg)
    assert fps[2] == im.config_fingerprint({"stage2": before, "stage1": fps[1]})
    untouched = load_config(["stage2.released.sam3.checkpoint=/elsewhere"])
    assert stage_fingerprints(untouched) == fps
    sam3 = stage_fingerprints(load_config(["stage2.tracker=sam3"]))
    assert sam3[2] != fps[2]
    # SAMURAI's hyper-parameters are not SAM 3's; the weights it uses are.
    tuned = load_config(["stage2.tracker=sam3", "stage2.samurai.kf_score_weight=0.5"])
    assert stage_fingerprints(tuned) == sam3
    other = load_config(["stage2.tracker=sam3", "stage2.checkpoint=/elsewhere"])
    assert stage_fingerprints(other)[2] != sam3[2]


def test_build_errors_are_one_line_before_anything_loads(
    sam3_options, tiny_sam3_dir, fixtures_dir, tmp_path, monkeypatch
):
    def no_loading(source):
        raise AssertionError("loaded despite a problem")

    monkeypatch.setattr(sam3, "load_sam3", no_loading)
    sam2_file = fixtures_dir / "sam2_tiny" / "weights_propagating.pt"
    sam2_folder = tmp_path / "sam2_video"
    sam2_folder.mkdir()
    (sam2_folder / "config.json").write_text(json.dumps({"model_type": "sam2_video"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_sam3_dir / "config.json").read_text())
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_processor / name).write_bytes((tiny_sam3_dir / name).read_bytes())
    cases = {
        "stage2.model=sam2.1_hiera_l: SAM 3's tracker .* takes stage2.model=sam3": {
            "model": "sam2.1_hiera_l"
        },
        "weights_propagating.pt: a file, not SAM 3's weights": {"checkpoint": str(sam2_file)},
        "describes a sam2_video model, not SAM 3's tracker": {"checkpoint": str(sam2_folder)},
        "no config.json in the folder": {"checkpoint": str(empty)},
        r"no \*.safetensors weights": {"checkpoint": str(no_weights)},
        "no processor_config.json": {"checkpoint": str(no_processor)},
        "no such folder, and not a hub id": {"checkpoint": str(tmp_path / "a" / "b" / "c")},
    }
    for message, changes in cases.items():
        options = dataclasses.replace(sam3_options, **changes)
        assert sam3.model_problems(options, hint="") == [one_line(sam3.checkpoint_problem(options))]
        with pytest.raises(CheckpointError, match=message) as raised:
            sam3.build(options, device="cpu")
        assert "\n" not in str(raised.value)
    assert sam3.checkpoint_problem(sam3_options) is None
    assert sam3.model_problems(sam3_options, hint="") == []


def test_hub_ids_gated_unknown_or_offline(sam3_options, tmp_path, monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    options = dataclasses.replace(sam3_options, checkpoint="facebook/sam3")
    # Not in the (empty) cache while offline: no request leaves the machine.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    problem = one_line(sam3.checkpoint_problem(options))
    assert "not in the local Hugging Face cache" in problem and "HF_HUB_OFFLINE" in problem

    def gated(repo_id, filename):
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        response = httpx2.Response(401, request=httpx2.Request("GET", url))
        raise GatedRepoError(f"Access to model {repo_id} is restricted", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    problem = one_line(sam3.checkpoint_problem(options))
    assert "gated hub repository" in problem
    assert "https://huggingface.co/facebook/sam3" in problem and "hf auth login" in problem

    # A cached (or downloaded) config.json: the family is checked as in a folder.
    config = tmp_path / "config.json"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(config))
    config.write_text(json.dumps({"model_type": "sam3_video"}))
    assert sam3.checkpoint_problem(options) is None
    config.write_text(json.dumps({"model_type": "sam2_video"}))
    assert "not SAM 3's tracker" in one_line(sam3.checkpoint_problem(options))


@pytest.mark.slow
def test_a_checkpoint_without_tracker_weights_is_refused(tiny_sam3_dir, sam3_options, tmp_path):
    """transformers would fill missing weights at random; the tracker refuses the checkpoint."""
    from safetensors.torch import load_file, save_file

    for name in ("config.json", "processor_config.json"):
        (tmp_path / name).write_bytes((tiny_sam3_dir / name).read_bytes())
    weights = load_file(tiny_sam3_dir / "model.safetensors")
    dropped = sorted(k for k in weights if ".memory_encoder." in k)  # saved with prefixes
    assert dropped
    save_file(
        {k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors"
    )
    options = dataclasses.replace(sam3_options, checkpoint=str(tmp_path))
    with pytest.raises(CheckpointError, match=f"{len(dropped)} weight\\(s\\) of SAM 3's tracker"):
        sam3.build(options, device="cpu")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pipeline_and_demo_with_sam3(
    tiny_sam3_dir, tiny_model_overrides, make_split, run_cli, tmp_path
):
    """A tiny clip through the three stages and the demo with stage2.tracker=sam3."""
    videos = {"vid": {"frames": ["00000", "00001", "00002"], "expressions": {"0": "the dog"}}}
    root = make_split(tmp_path / "split", videos, size=(HEIGHT, WIDTH))
    sam3_overrides = [
        *tiny_model_overrides[:3],  # the tiny ReferDINO
        "stage1.top_k=2",
        "stage2.tracker=sam3",
        f"stage2.checkpoint={tiny_sam3_dir}",
        "stage2.score_threshold=0.0",  # every query with a score: SAM 3 tracks objects
    ]
    run_cli(
        "--cpu",
        *sam3_overrides,
        f"data.root={root}",
        f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'submissions'}",
    )
    saved = (tmp_path / "work" / "config.yaml").read_text()
    assert "model: sam3" in saved and f"checkpoint: {tiny_sam3_dir}" in saved
    record = im.load_stage2(im.stage_path(tmp_path / "work", 2, "vid"))
    refinement = record.expressions["0"]
    assert refinement.kept_columns.size > 0, "SAM 3 tracked no object"
    assert refinement.sam2_union().any()
    for name in ("stage2.zip", "fused.zip"):
        assert (tmp_path / "submissions" / name).is_file()

    out = tmp_path / "demo"
    run_cli("demo", "--video", root / "JPEGImages" / "vid", "--text", "the dog", "--cpu",
            "--out", out, *sam3_overrides, timeout=600)  # fmt: skip
    assert sorted(p.name for p in (out / "masks" / "0").iterdir()) == [
        f"{t:05d}.png" for t in range(NUM_FRAMES)
    ]


def test_the_app_offers_sam3_with_its_released_weights(tmp_path):
    from referdino_plus.app import CONFIGURED_SAM2, App, JobRequest
    from referdino_plus.segmenter import DemoError

    def app_with(*overrides):
        cfg = load_config([*overrides, f"app.results_dir={tmp_path / 'app'}", "app.examples=[]"])
        return App(cfg, "cpu")

    app = app_with()
    assert "sam3" in app.tracker_choices
    request = JobRequest(
        source=tmp_path,
        sentences=["a dog"],
        frame_step=1,
        max_frames=2,
        sam2=CONFIGURED_SAM2,
        prompt="mask",
        tracker="sam3",
    )
    stage2 = app.job_config(request).stage2
    assert (stage2.model, stage2.checkpoint, str(stage2.tracker)) == (
        "sam3",
        "hf://facebook/sam3/",
        "sam3",
    )
    samurai = app.job_config(dataclasses.replace(request, tracker="samurai")).stage2
    assert (samurai.model, samurai.checkpoint) == (app.cfg.stage2.model, app.cfg.stage2.checkpoint)
    with pytest.raises(DemoError, match="SAM 2 weights do not fit the sam3 tracker"):
        app.job_config(dataclasses.replace(request, sam2="tiny"))
    # A server configured with SAM 3 keeps its folder for sam3; sam2 gets its released weights.
    folder = tmp_path / "sam3"
    app = app_with("stage2.tracker=sam3", f"stage2.checkpoint={folder}")
    assert app.job_config(request).stage2.checkpoint == str(folder)
    sam2 = app.job_config(dataclasses.replace(request, tracker="sam2")).stage2
    assert (sam2.model, sam2.checkpoint) == (
        "sam2.1_hiera_l",
        "hf://facebook/sam2.1-hiera-large/sam2.1_hiera_large.pt",
    )


@pytest.mark.slow
def test_an_app_job_with_sam3(tiny_sam3_dir, tiny_model_overrides, tmp_path):
    """A job of the browser app's back end with stage2.tracker=sam3, per-frame progress included."""
    from referdino_plus.app import CONFIGURED_SAM2, App, JobRequest, write_example_clip
    from referdino_plus.segmenter import STAGE2

    cfg = load_config(
        [
            *tiny_model_overrides[:3],
            "stage1.top_k=2",
            "stage2.tracker=sam3",
            f"stage2.checkpoint={tiny_sam3_dir}",
            "stage2.score_threshold=0.0",
            f"app.results_dir={tmp_path / 'results'}",
            "app.examples=[]",
        ]
    )
    app = App(cfg, "cpu")
    clip = write_example_clip(tmp_path / "clip.mp4", num_frames=NUM_FRAMES, size=(HEIGHT, WIDTH))
    request = JobRequest(
        source=clip, sentences=["a square"], frame_step=1, max_frames=NUM_FRAMES,
        sam2=CONFIGURED_SAM2, prompt="mask", tracker="sam3",
    )  # fmt: skip
    events = []
    result = app.run(request, progress=events.append)
    assert result.summary["stage2"]["checkpoint"] == str(tiny_sam3_dir)
    assert len(result.summary["sentences"]) == 1
    assert [e for e in events if e.step == STAGE2 and "frame" in e.detail]
