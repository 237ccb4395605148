"""``run_pipeline.py app`` without a browser: its jobs, limits and messages (no Gradio needed)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from referdino_plus.app import (
    CONFIGURED_SAM2,
    GENERATED_EXAMPLE,
    READING,
    App,
    JobRequest,
    parse_sentences,
    write_example_clip,
)
from referdino_plus.app_server import INSTALL_HINT, parse_args
from referdino_plus.config import load_config
from referdino_plus.segmenter import STAGE1, STAGE2, STAGE3, DemoError, StageProgress

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES, HEIGHT, WIDTH = 6, 64, 96


def make_app(tmp_path: Path, overrides: list[str]) -> App:
    cfg = load_config([f"app.results_dir={tmp_path / 'results'}", *overrides])
    return App(cfg, "cpu")


def request_for(source: Path, **changes) -> JobRequest:
    request = JobRequest(
        source=source,
        sentences=["a square", "the background"],
        frame_step=1,
        max_frames=60,
        sam2=CONFIGURED_SAM2,
        prompt="mask",
        tracker="sam2",
    )
    return dataclasses.replace(request, **changes)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_example_clip(tmp_path / "clip.mp4", num_frames=NUM_FRAMES, size=(HEIGHT, WIDTH))


def test_sentences_one_per_line_as_written():
    assert parse_sentences("the  dog. \n\n  \na cat\r\n", 6) == ["the  dog. ", "a cat"]
    for empty in ("", "  \n\n"):
        with pytest.raises(DemoError, match="no sentence: type one referring sentence per line"):
            parse_sentences(empty, 6)
    with pytest.raises(DemoError, match="3 sentences: this app takes at most 2"):
        parse_sentences("a\nb\nc", 2)


def test_arguments():
    args = parse_args(["--cpu", "stage2.model=x", "--port", "8123"])
    assert args.cpu and args.overrides == ["stage2.model=x", "app.port=8123"]
    with pytest.raises(DemoError, match="key=value"):
        parse_args(["stray"])


def test_help_is_written_for_users():
    """``run_pipeline.py app --help`` says what the page does and how to reach it, without the
    module's notes for developers (reStructuredText roles, module names)."""
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), "app", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for developer_words in ("``", ":class:", ":func:", ":mod:", "referdino_plus.", "This module"):
        assert developer_words not in text
    for said in ("browser", "sentence", "--port", "--cpu", "masks.zip", "app.results_dir"):
        assert said in text


def test_the_decision_table_escapes_the_sentences():
    page = pytest.importorskip("referdino_plus.app_page")  # needs Gradio
    entry = {
        "index": 0,
        "text": "the <b>cat</b> & مرحبا",
        "color": "#ff4646",
        "fused_output": "SAM 2",
        "frames_sam2_smaller": 1,
        "frames_both_nonempty": 4,
        "kept_queries": [3, 7],
        "frames_with_mask": 4,
    }
    table = page.decision_table({"frames": 6, "sentences": [entry]})
    assert "<b>" not in table and "the &lt;b&gt;cat&lt;/b&gt; &amp; مرحبا" in table
    assert '<td class="wraps" dir="auto">' in table and "background:#ff4646" in table
    for cell in ("<td>1</td>", "<td>1/4</td>", "<td>3, 7</td>", "<td>4/6</td>"):
        assert cell in table


def test_examples_are_the_generated_clip_then_those_configured(tmp_path, clip):
    """No example by default but the generated clip; a test sets its own: a video, a frame
    folder (previewed as an mp4 once), and one that does not exist (left out)."""
    assert load_config([]).app.examples == []
    frames = tmp_path / "video" / "frames"
    frames.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (WIDTH, HEIGHT), (40 * index, 0, 0)).save(frames / f"{index:05d}.jpg")
    missing = tmp_path / "nowhere.mp4"
    app = make_app(tmp_path, [f"app.examples=[{clip},{frames},{missing}]"])
    generated, video, folder = app.examples
    assert generated.label == GENERATED_EXAMPLE and generated.source.is_file()
    assert (video.label, video.source, video.preview) == ("clip.mp4 (0.8 s)", clip, clip)
    assert folder.label == "video/frames (3 frames)" and folder.source == frames
    assert folder.preview.suffix == ".mp4" and folder.preview.parent == generated.source.parent
    made = folder.preview.stat().st_mtime_ns
    again = make_app(tmp_path, [f"app.examples=[{frames}]"]).examples[1]
    assert again.preview == folder.preview and again.preview.stat().st_mtime_ns == made


def test_limits_give_one_line_messages(tmp_path, clip):
    app = make_app(
        tmp_path, ["app.max_clip_seconds=0.5", "app.max_frames=10", "app.default_max_frames=10"]
    )
    assert [e.label for e in app.examples] == [GENERATED_EXAMPLE]
    with pytest.raises(DemoError, match=r"lasts 0\.8 s; this app takes clips of at most 0\.5 s"):
        app.check_request(request_for(clip, max_frames=10))
    with pytest.raises(DemoError, match=r"max frames 11: expected 1 to 10 \(app.max_frames\)"):
        app.check_request(request_for(clip, max_frames=11))
    with pytest.raises(DemoError, match="frame step 0"):
        app.check_request(request_for(clip, frame_step=0, max_frames=10))
    corrupt = tmp_path / "upload" / "holiday.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8))
    with pytest.raises(DemoError) as caught:
        app.run(request_for(corrupt, max_frames=10))
    assert str(caught.value).startswith("holiday.mp4: not a readable video")
    assert str(tmp_path) not in str(caught.value)  # the server's paths stay private


def test_the_default_limits_take_long_clips(tmp_path):
    """1,200 frames (48 s at 25 fps) pass the limits the server runs with by default."""
    app = make_app(tmp_path, [])
    long = write_example_clip(tmp_path / "long.mp4", num_frames=1200, size=(32, 48), fps=25)
    app.check_request(request_for(long, max_frames=1200))


def test_missing_checkpoint_names_download_script(tmp_path, clip):
    nowhere = tmp_path / "checkpoints"
    app = make_app(
        tmp_path,
        [
            f"stage1.checkpoint={nowhere / 'mevis_swinb.pth'}",
            f"app.sam2_models=[{{name:tiny,model:sam2.1_hiera_t,checkpoint:{nowhere / 'tiny.pt'}}}]",
        ],
    )
    app.load_models()  # the server starts anyway, and the page says why nothing runs
    assert "mevis_swinb.pth: not found; run `bash download_ckpts.sh`" in (app.startup_problem)
    with pytest.raises(DemoError, match=r"tiny\.pt: not found; run `bash download_ckpts.sh`"):
        app.run(request_for(clip, sam2="tiny"))
    with pytest.raises(DemoError, match="SAM 2 'huge': expected one of"):
        app.job_config(request_for(clip, sam2="huge"))


def test_job_config_follows_the_page(tmp_path):
    app = make_app(tmp_path, [])
    cfg = app.job_config(request_for(Path("x"), sam2="small", prompt="box", tracker="samurai"))
    assert (cfg.stage2.model, cfg.stage2.checkpoint) == (
        "sam2.1_hiera_s",
        "hf://facebook/sam2.1-hiera-small/sam2.1_hiera_small.pt",
    )
    assert (str(cfg.stage2.prompt), str(cfg.stage2.tracker)) == ("box", "samurai")
    assert str(app.cfg.stage2.prompt) == "mask"  # the server's configuration is left as it was
    assert app.sam2_choices == [CONFIGURED_SAM2, "tiny", "small", "base+", "large"]


def test_old_jobs_are_deleted(tmp_path):
    app = make_app(tmp_path, ["app.keep_results=2"])
    folders = [app.new_job_dir() for _ in range(4)]
    assert [f.name for f in folders] == [f"job-{n:06d}" for n in (1, 2, 3, 4)]
    assert sorted(p.name for p in app.results_dir.glob("job-*")) == ["job-000003", "job-000004"]


def test_without_gradio_the_app_says_how_to_install_it():
    code = (
        "import sys; sys.modules['gradio'] = None\n"  # import gradio fails as if not installed
        "from referdino_plus.cli import main\n"
        "sys.exit(main(['app', '--cpu']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert INSTALL_HINT in proc.stderr


@pytest.mark.slow
def test_the_pipeline_and_its_tests_need_no_gradio():
    """Every test module imports without Gradio and Playwright (the app's browser test then
    skips, or fails under CI)."""
    code = (
        "import sys, pytest\n"
        "sys.modules['gradio'] = sys.modules['playwright'] = None\n"
        "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tests/test_app_browser.py::" in proc.stdout


@pytest.mark.slow
def test_a_job_writes_the_demo_outputs_and_a_zip(tmp_path, clip, tiny_model_overrides):
    app = make_app(tmp_path, [*tiny_model_overrides, "stage1.top_k=2", "app.gallery_frames=4"])
    app.load_models()
    assert app.startup_problem is None
    loaded = dict(app.segmenter._models)
    events: list[StageProgress] = []
    result = app.run(request_for(clip), progress=events.append)

    assert result.overlay.is_file() and result.folder.parent == app.results_dir
    names = [f"{t:05d}" for t in range(NUM_FRAMES)]
    expected = {f"{index}/{name}.png" for index in (0, 1) for name in names}
    with zipfile.ZipFile(result.masks_zip) as archive:
        assert set(archive.namelist()) == expected | {"summary.json"}
        for member in expected:
            with Image.open(archive.open(member)) as image:
                assert image.mode == "L" and image.size == (WIDTH, HEIGHT)
                assert set(np.unique(np.asarray(image))) <= {0, 255}
        summary = json.loads(archive.read("summary.json"))
    assert [s["text"] for s in summary["sentences"]] == ["a square", "the background"]
    assert len(result.gallery) == 2 * 4 and all(path.is_file() for path, _ in result.gallery)

    steps = [e.step for e in events]
    assert steps.index(READING) < steps.index(STAGE1) < steps.index(STAGE2) < steps.index(STAGE3)
    assert [e.done for e in events if e.step == READING] == list(range(1, NUM_FRAMES + 1))
    for step in (STAGE1, STAGE2):
        fractions = [e.fraction for e in events if e.step == step]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    frames = [e for e in events if e.step == STAGE2 and "frame" in e.detail]
    assert frames, "stage 2 reports each propagated frame"

    # the models stay loaded: a second job with the same SAM 2 builds nothing
    app.run(request_for(clip, sentences=["a square"], prompt="box"), progress=None)
    assert all(app.segmenter._models[slot][1] is model for slot, (_, model) in loaded.items())

    # another tracker replaces SAM 2 (ReferDINO stays), with the same per-frame progress
    from stage2_sam2_refine.samurai import SamuraiVideoPredictor

    events.clear()
    app.run(request_for(clip, sentences=["a square"], tracker="samurai"), progress=events.append)
    assert app.segmenter._models[STAGE1][1] is loaded[STAGE1][1]
    assert isinstance(app.segmenter._models[STAGE2][1].predictor, SamuraiVideoPredictor)
    assert [e for e in events if e.step == STAGE2 and "frame" in e.detail]
