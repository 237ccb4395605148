"""Long clips: peak resident memory of stages 1-3 against the clip's length.

Each entry point runs in a process of its own on generated clips of several lengths (default 120
and 1,200 frames), with one sentence and one kept query (``stage1.top_k=1``,
``stage2.score_threshold=0``), and the process's peak resident set size is read from the
operating system when it exits (``wait4``'s ``ru_maxrss``):

- ``demo``: ``run_pipeline.py demo`` on an H.264 file (its defaults: windowed stage 1, frames
  decoded as the stages need them, overlay.mp4, per-frame PNGs and masks.zip written frame by
  frame);
- ``pipeline``: ``run_pipeline.py`` stages 1-3 on a one-video MeViS-layout split, with the
  windowed stage 1 of the demo (``--window``) and the archives encoded in the process
  (``archive.jobs=1``), so that one process holds everything.

The last table column divides each peak by the shortest clip's. Bounded memory means the column
stays near 1 however long the clip; the target is at most 1.5 for 10 times the frames.

    python benchmarks/bench_long_video.py                        # tiny models, 120 and 1,200 frames
    python benchmarks/bench_long_video.py --models real --frames 8,80 --size 640x360

``--models tiny`` uses the random tiny models of ``tests/fixtures`` (seconds per 100 frames);
``--models real`` writes ReferDINO ``mevis_swinb`` and SAM 2.1-L with random weights
(``real_size.py``) once into ``--cache`` and runs those: the sizes, and so the memory, are the
released models'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clips  # noqa: E402
from timing import format_table  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
SENTENCE = "the small dog running towards the door"
VIDEO_ID = "long"
ENTRIES = ("demo", "pipeline")
# One sentence, one kept query: the memory a clip's length costs, not its number of objects.
ONE_QUERY = ["stage1.top_k=1", "stage2.score_threshold=0"]


@dataclass(frozen=True)
class Measurement:
    """One entry point on one clip.

    Attributes:
        entry: ``demo`` or ``pipeline``.
        frames: the clip's length.
        peak_rss_mb: the process's peak resident set size, MiB.
        seconds: wall time of the process.
    """

    entry: str
    frames: int
    peak_rss_mb: float
    seconds: float


def tiny_models() -> list[str]:
    """Overrides selecting the tiny random models of ``tests/fixtures``."""
    stage1, sam2 = FIXTURES / "referdino_tiny", FIXTURES / "sam2_tiny"
    return [
        f"stage1.model={stage1 / 'model.yaml'}",
        f"stage1.checkpoint={stage1 / 'referdino_checkpoint.pth'}",
        "stage1.short_side=64",
        f"stage2.model={sam2 / 'tiny_sam2.1.yaml'}",
        f"stage2.checkpoint={sam2 / 'weights_propagating.pt'}",
    ]


def real_models(cache: Path) -> list[str]:
    """Overrides selecting ReferDINO ``mevis_swinb`` and SAM 2.1-L with random weights, written
    into ``cache`` on first use."""
    import real_size

    stage1_dir, sam2_dir = cache / "referdino", cache / "sam2"
    marker = cache / "models.json"
    if not marker.is_file():
        files = real_size.write_referdino(stage1_dir)
        sam2 = real_size.write_sam2(sam2_dir, "sam2.1_hiera_l")
        marker.write_text(
            json.dumps(
                {
                    "checkpoint": str(files.checkpoint),
                    "text_encoder": str(files.text_encoder),
                    "sam2": str(sam2),
                }
            )
        )
    written = json.loads(marker.read_text())
    return [
        f"stage1.model={real_size.REFERDINO_MODEL}",
        f"stage1.checkpoint={written['checkpoint']}",
        f"stage1.text_encoder={written['text_encoder']}",
        "stage2.model=sam2.1_hiera_l",
        f"stage2.checkpoint={written['sam2']}",
    ]


def write_clip_video(path: Path, num_frames: int, height: int, width: int) -> Path:
    """A generated clip (``clips.synthetic_clip``, one object) as an H.264 file, written frame
    by frame."""
    from rvos.video import h264_writer

    with h264_writer(path, size=(height, width), fps=Fraction(10), crf=18) as write:
        for start in range(0, num_frames, 100):
            count = min(100, num_frames - start)
            frames, _ = clips.synthetic_clip(count, height, width, num_objects=1, seed=start)
            for frame in frames:
                write(np.asarray(frame))
    return path


def write_clip_split(root: Path, num_frames: int, height: int, width: int) -> Path:
    """A generated clip as a one-video, one-sentence MeViS-layout split under ``root``."""
    folder = root / "JPEGImages" / VIDEO_ID
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{t:05d}" for t in range(num_frames)]
    for start in range(0, num_frames, 100):
        count = min(100, num_frames - start)
        frames, _ = clips.synthetic_clip(count, height, width, num_objects=1, seed=start)
        for name, frame in zip(names[start : start + count], frames, strict=True):
            frame.save(folder / f"{name}.jpg", quality=95)
    expression = {"exp": SENTENCE, "obj_id": [0], "anno_id": [f"{VIDEO_ID}-0"]}
    meta = {"videos": {VIDEO_ID: {"frames": names, "expressions": {"0": expression}}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    return root


def run_measured(command: list[str], *, log: Path, tmpdir: Path) -> tuple[float, float]:
    """Run ``command`` from the project root with ``TMPDIR=tmpdir``; returns ``(peak RSS in MiB,
    seconds)``.

    Raises:
        RuntimeError: a non-zero exit (the message ends with the log's last lines).
    """
    env = dict(os.environ, TQDM_DISABLE="1", TMPDIR=str(tmpdir))
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(command)}\n{tail}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def measure(
    entry: str,
    num_frames: int,
    *,
    size: tuple[int, int],
    models: list[str],
    window: list[str],
    device: str,
    scratch: Path,
) -> Measurement:
    """Generate a clip of ``num_frames`` and run ``entry`` on it in a fresh process."""
    height, width = size
    folder = scratch / f"{entry}-{num_frames}"
    folder.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, str(PROJECT_ROOT / "run_pipeline.py")]
    device_args = ["--cpu"] if device == "cpu" else []
    if entry == "demo":
        video = write_clip_video(folder / "clip.mp4", num_frames, height, width)
        command = [
            *python,
            "demo",
            *device_args,
            "--video",
            str(video),
            "--text",
            SENTENCE,
            "--out",
            str(folder / "out"),
            *models,
            *ONE_QUERY,
        ]
    else:
        root = write_clip_split(folder / "split", num_frames, height, width)
        command = [
            *python,
            *device_args,
            f"data.root={root}",
            "data.validate_frames=false",
            f"work_dir={folder / 'work'}",
            f"submission_dir={folder / 'submissions'}",
            "archive.jobs=1",
            "evaluation.enabled=false",
            *models,
            *ONE_QUERY,
            *window,
        ]
    scratch_tmp = folder / "tmp"  # the process's TMPDIR: the demo decodes its clip there
    scratch_tmp.mkdir(exist_ok=True)
    peak, seconds = run_measured(command, log=folder / "log.txt", tmpdir=scratch_tmp)
    check_outputs(entry, folder, num_frames)
    if any(scratch_tmp.glob("clip-*")):
        raise RuntimeError(f"{entry}: the clip's decoded frames were left in {scratch_tmp}")
    return Measurement(entry, num_frames, peak, seconds)


def check_outputs(entry: str, folder: Path, num_frames: int) -> None:
    """Raise unless the run's outputs cover every frame of the clip (a mask per frame; for the
    demo also an overlay frame per frame), so that no limit cut the clip short.

    Raises:
        RuntimeError: naming what is short.
    """
    if entry == "demo":
        out = folder / "out"
        summary = json.loads((out / "summary.json").read_text())
        masks = len(list((out / "masks" / "0").glob("*.png")))
        import av

        with av.open(str(out / "overlay.mp4")) as container:
            overlay = sum(1 for _ in container.decode(video=0))
        counts = {"summary.json frames": summary["frames"], "masks/0": masks}
        counts["overlay.mp4 frames"] = overlay
    else:
        with zipfile.ZipFile(folder / "submissions" / "fused.zip") as archive:
            counts = {"fused.zip masks": len(archive.namelist())}
    short = {name: n for name, n in counts.items() if n != num_frames}
    if short:
        raise RuntimeError(f"{entry}, {num_frames} frames: outputs cover {short}")


def report(measurements: list[Measurement]) -> str:
    """The table: one row per run, with each peak divided by its entry's shortest clip's."""
    rows = []
    for entry in dict.fromkeys(m.entry for m in measurements):
        runs = sorted((m for m in measurements if m.entry == entry), key=lambda m: m.frames)
        base = runs[0].peak_rss_mb
        for m in runs:
            rows.append(
                [
                    entry,
                    f"{m.frames:,}",
                    f"{m.peak_rss_mb:,.0f}",
                    f"{m.seconds:,.1f}",
                    f"{m.seconds / m.frames:.3f}",
                    f"{m.peak_rss_mb / base:.2f}x",
                ]
            )
    headers = ["entry", "frames", "peak RSS (MiB)", "wall (s)", "s/frame", "peak / shortest"]
    return format_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("tiny", "real"), default="tiny")
    parser.add_argument(
        "--frames",
        default="120,1200",
        type=lambda text: sorted(int(v) for v in text.split(",")),
        help="clip lengths, comma-separated (default 120,1200)",
    )
    parser.add_argument(
        "--size", type=clips.parse_size, default=(180, 320), help="WIDTHxHEIGHT (default 320x180)"
    )
    parser.add_argument(
        "--entries",
        default=",".join(ENTRIES),
        type=lambda text: text.split(","),
        help="demo, pipeline or both (default)",
    )
    parser.add_argument(
        "--window",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="the pipeline run's stage-1 window overrides (default: the demo's window)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--cache",
        type=Path,
        default=PROJECT_ROOT / "work" / "bench_models",
        help="where --models real writes its random-weight files (reused)",
    )
    parser.add_argument(
        "--limit", type=float, default=1.5, help="the target: longest peak / shortest peak"
    )
    args = parser.parse_args(argv)
    unknown = set(args.entries) - set(ENTRIES)
    if unknown:
        parser.error(f"--entries: unknown {sorted(unknown)}; expected {', '.join(ENTRIES)}")
    return args


def demo_window() -> list[str]:
    """The stage-1 window the demo uses, as overrides of the pipeline's ``stage1`` keys."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(PROJECT_ROOT / "configs" / "pipeline.yaml")
    return [f"stage1.window.frames={config.demo.window_frames}"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = tiny_models() if args.models == "tiny" else real_models(args.cache)
    window = demo_window() if args.window is None else args.window
    measurements = []
    with tempfile.TemporaryDirectory(prefix="bench_long_") as scratch:
        for entry in args.entries:
            for num_frames in args.frames:
                print(f"{entry}: {num_frames} frames ...", flush=True)
                measurements.append(
                    measure(
                        entry,
                        num_frames,
                        size=args.size,
                        models=models,
                        window=window,
                        device=args.device,
                        scratch=Path(scratch),
                    )
                )
    height, width = args.size
    print(
        f"\n{args.models} models, {width}x{height} frames, one sentence, one kept query, "
        f"{args.device}; peak resident memory of each process:"
    )
    print(report(measurements))
    worst = max(
        max(m.peak_rss_mb for m in measurements if m.entry == entry)
        / min(m.peak_rss_mb for m in measurements if m.entry == entry)
        for entry in args.entries
    )
    verdict = "met" if worst <= args.limit else "NOT met"
    print(f"target: longest clip's peak <= {args.limit}x the shortest's: {verdict} ({worst:.2f}x)")
    return 0 if worst <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
