"""``run_pipeline.py demo``: a video or a frame folder and sentences -> overlay, masks, summary."""

import json
import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from referdino_plus.demo import DemoError, check_sentences, parse_args
from rvos.drawing import caption_band, caption_font, color_of
from rvos.video import VideoError, decode_video, natural_key, read_frame_folder

HEIGHT, WIDTH = 64, 96


def write_clip(path: Path, num_frames: int = 8, size=(HEIGHT, WIDTH), rate: int = 8) -> Path:
    """An H.264 clip of a red square moving right over a grey background."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            pixels = np.full((height, width, 3), 60, dtype=np.uint8)
            x = 4 + 8 * t
            pixels[20:44, x : x + 20] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def demo_overrides(tiny_model_overrides) -> list[str]:
    """The tiny random-weight models, few queries to stay fast."""
    return [*tiny_model_overrides, "stage1.top_k=2"]


@pytest.fixture(scope="module")
def run_demo(run_cli):
    def run(*args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        return run_cli("demo", *args, check=check, timeout=timeout)

    return run


def read_video(path: Path) -> tuple[list[np.ndarray], str, str]:
    """Frames ``[H, W, 3] uint8``, codec name and pixel format of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name, stream.codec_context.pix_fmt


def check_masks(folder: Path, names: list[str], size=(WIDTH, HEIGHT)) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.png" for n in names)
    for name in names:
        with Image.open(folder / f"{name}.png") as image:
            assert image.mode == "L" and image.size == size
            assert set(np.unique(np.asarray(image))) <= {0, 255}


@pytest.mark.slow
def test_video_demo_writes_overlay_masks_and_summary(demo_overrides, run_demo, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    # the second: 406 words, more than the text encoder reads and than a caption shows
    sentences = ["a square", "der Hintergrund läuft — " + " ".join(["the background"] * 203)]
    proc = run_demo(
        "--video", clip, "--text", sentences[0], "--text", sentences[1], "--cpu", "--out", out,
        *demo_overrides,
    )  # fmt: skip
    # records print on their own lines, not in a bar: here the one line that replaces sam2's
    # multi-line warning about its missing CUDA extension
    lines = proc.stderr.replace("\r", "\n").splitlines()
    said = [line for line in lines if "filling of mask holes" in line]
    assert len(said) == 1 and "%|" not in said[0], proc.stderr
    assert "cannot import name '_C'" not in proc.stderr
    frames, codec, pix_fmt = read_video(out / "overlay.mp4")
    band = caption_band(sentences, [color_of(i) for i in range(2)], WIDTH, max_lines=3)
    height = HEIGHT + band.shape[0]
    assert band.shape[0] <= 2 * 3 * caption_font(WIDTH).line_height  # capped, not 406 words tall
    dropped = [line for line in lines if "tokens" in line and "dropped" in line]
    assert len(dropped) == 1 and "sentence 2: " in dropped[0], proc.stderr
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert len(frames) == 8
    assert frames[0].shape == (height + height % 2, WIDTH, 3)
    names = [f"{t:05d}" for t in range(8)]
    for index in range(2):
        check_masks(out / "masks" / str(index), names)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["text"] for s in summary["sentences"]] == sentences  # whole
    assert summary["frames"] == 8 and summary["frame_size"] == [HEIGHT, WIDTH]
    for entry in summary["sentences"]:
        assert {"kept_queries", "fused_output", "multi_object"} <= set(entry)


@pytest.mark.slow
def test_frame_folder_in_natural_order_with_frame_step(demo_overrides, run_demo, tmp_path):
    """Odd frame sizes are padded to even in the video only; the masks keep the frame size.
    (SAMURAI tracks here, SAM 2 in the other runs.)"""
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in (8, 9, 10, 11):
        pixels = rng.integers(0, 255, (HEIGHT - 1, WIDTH - 1, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{number}.{'png' if number % 2 else 'jpg'}")
    out = tmp_path / "out"
    run_demo(
        "--video", folder, "--text", "a thing", "--frame-step", "2", "--cpu", "--out", out,
        *demo_overrides, "stage2.tracker=samurai",
    )  # fmt: skip
    check_masks(out / "masks" / "0", ["8", "10"], size=(WIDTH - 1, HEIGHT - 1))
    frames, _, _ = read_video(out / "overlay.mp4")
    assert len(frames) == 2
    assert frames[0].shape[1] == WIDTH and frames[0].shape[0] % 2 == 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "no such file"),
        ("corrupt_file", "not a readable video"),
        ("empty_text", "--text #2 is empty"),
        ("missing_checkpoint", "download_ckpts.sh"),
    ],
)
@pytest.mark.slow
def test_bad_input_exits_with_one_line(demo_overrides, run_demo, tmp_path, case, message):
    video, texts, overrides = tmp_path / "clip.mp4", ["a square"], list(demo_overrides)
    if case != "missing_file":
        write_clip(video, num_frames=2)
    if case == "corrupt_file":
        video.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8))
    if case == "empty_text":
        texts.append("   ")
    if case == "missing_checkpoint":
        overrides.append(f"stage2.checkpoint={tmp_path / 'nowhere.pt'}")
    text_args = [arg for text in texts for arg in ("--text", text)]
    proc = run_demo(
        "--video", video, *text_args, "--cpu", "--out", tmp_path / "out", *overrides, check=False
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "overlay.mp4").exists()


# -- in-process units -------------------------------------------------------------------------


def test_progress_bars_count_whole_units_with_the_frame_as_postfix(capsys):
    """Stage 2 reports fractions of a sentence (one per propagated frame): the bar counts whole
    sentences and says which frame in its postfix, never ``0.08333333333333333/2``."""
    from referdino_plus.segmenter import STAGE2, StageProgress, TqdmProgress

    with TqdmProgress() as bars:
        for done in range(1, 13):
            detail = f"sentence 1/2, frame {done}/12"
            bars(StageProgress(STAGE2, done / 12, 2, "sentence", detail))
        bars(StageProgress(STAGE2, 1 + 1 / 12, 2, "sentence", "sentence 2/2, frame 1/12"))
    shown = capsys.readouterr().err.replace("\r", "\n")
    assert "0/2" in shown and "1/2" in shown, shown
    assert not re.search(r"\d\.\d+/2", shown), shown
    for frame in range(1, 13):
        assert f"sentence 1/2, frame {frame}/12" in shown
    assert "sentence 2/2, frame 1/12" in shown


def test_decode_video_frame_step_and_max_frames(tmp_path):
    clip = decode_video(
        write_clip(tmp_path / "clip.mp4", num_frames=7), frame_step=3, max_frames=None,
        fallback_fps=10,
    )  # fmt: skip
    assert clip.frame_names == ["00000", "00003", "00006"]
    assert clip.size == (HEIGHT, WIDTH) and float(clip.fps) == pytest.approx(8 / 3)
    short = decode_video(tmp_path / "clip.mp4", frame_step=2, max_frames=2, fallback_fps=10)
    assert short.frame_names == ["00000", "00002"]


def test_frame_folder_rejects_mixed_sizes(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    with pytest.raises(VideoError, match="one size"):
        read_frame_folder(tmp_path, frame_step=1, max_frames=None, fps=10)


def test_a_video_is_read_back_with_the_pixels_it_decodes_to(tmp_path):
    """The kept frames go to lossless PNGs in a temporary folder, read when indexed; closing the
    clip deletes them."""
    path = write_clip(tmp_path / "clip.mp4", num_frames=7)
    calls = []
    clip = decode_video(
        path, frame_step=2, max_frames=None, fallback_fps=10, on_frame=lambda *a: calls.append(a)
    )
    assert calls == [(done, 4) for done in range(1, 5)]
    with av.open(str(path)) as container:
        decoded = [f.to_image() for f in container.decode(container.streams.video[0])]
    assert len(clip.frames) == 4 and clip.frames.paths[0].parent == clip.scratch
    for index, frame in enumerate(clip.frames):
        assert frame.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(frame), np.asarray(decoded[2 * index]))
    scratch = clip.scratch
    with clip:
        pass
    assert clip.scratch is None and not scratch.exists()


def test_a_frame_folder_is_read_when_indexed(tmp_path, fixtures_dir):
    """Frames stay files; the tracker gets the same tensor from the clip as from the JPEGs."""
    from stage2_sam2_refine.predictor import load_frames

    source = fixtures_dir / "referdino_tiny" / "frames"
    calls = []
    clip = read_frame_folder(
        source, frame_step=10, max_frames=None, fps=10, on_frame=lambda *a: calls.append(a)
    )
    assert calls == [(done, 4) for done in range(1, 5)]
    assert clip.scratch is None and clip.size == (540, 960) and len(clip.frames) == 4
    paths = sorted(source.glob("*.jpg"))[::10]
    from_files, _, _ = load_frames(paths, 64)
    from_clip, _, _ = load_frames(clip.frames, 64)
    assert torch.equal(from_clip, from_files)
    clip.close()
    assert source.is_dir()  # a frame folder is never deleted
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.jpg").write_bytes((source / "00000.jpg").read_bytes()[:2000])
    with pytest.raises(VideoError, match=r"frame .*0\.jpg is unreadable"):
        read_frame_folder(broken, frame_step=1, max_frames=None, fps=10)


def test_sentences_and_arguments():
    assert check_sentences(["the  dog. ", "a cat"]) == ["the  dog. ", "a cat"]  # as written
    with pytest.raises(DemoError, match="#1 is empty"):
        check_sentences([""])
    args = parse_args(["--video", "v.mp4", "stage2.model=x", "--text", "a=b", "--cpu"])
    assert args.text == ["a=b"] and args.overrides == ["stage2.model=x"]
    with pytest.raises(DemoError, match="key=value"):
        parse_args(["--video", "v.mp4", "--text", "a", "stray"])
    assert sorted(["f10", "f2", "F1"], key=natural_key) == ["F1", "f2", "f10"]


@pytest.mark.slow
def test_make_try_runs_offline_on_the_bundled_models(tmp_path):
    """The README's first command: the demo on tests/fixtures' tiny models, with no network and
    nothing outside the repository (a hub lookup or a download would fail here)."""
    import os
    import sys

    project = Path(__file__).resolve().parents[1]
    out = tmp_path / "try"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    proc = subprocess.run(
        ["make", "-s", "try", f"PY={sys.executable}", f"TRY_OUT={out}"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # the progress bars count whole sentences and frames
    assert "stage 2 (SAM 2)" in proc.stderr
    assert not re.search(r"\d\.\d+/\d", proc.stderr), proc.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["sentences"]) == 2
    frames, _, _ = read_video(out / "overlay.mp4")
    assert len(frames) == 12
    for sentence in summary["sentences"]:
        assert len(list((out / sentence["masks"]).glob("*.png"))) == 12
