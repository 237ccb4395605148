"""Shared test helpers (as fixtures) and the markers.

Fast unit tests run in seconds on synthetic arrays (``make test-fast``: ``-m "not slow"``);
tests marked ``slow`` load the fixture models or run the command line end to end. Tests marked
``slurm`` need a SLURM cluster and ``browser`` ones Chromium: they skip without them, and fail
under ``CI=true``. Tests marked ``gpu`` (``tests/gpu``, ``make gpu-check``) run only when the
``-m`` expression names that marker: a plain ``pytest`` leaves them out instead of skipping them.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"

# Property-based tests (hypothesis): the same examples on every run and every machine (derived from
# each test, not drawn at random), a bounded number of them (a test may ask for fewer), no time
# limit per example (a shared CI machine is slow at times), and nothing written into the
# repository (no example database: a failure prints the example that reproduces it).
settings.register_profile(
    "ci", derandomize=True, max_examples=50, deadline=None, database=None, print_blob=True
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items) -> None:
    """Leave out the tests marked ``gpu`` unless ``-m`` names that marker (``-m gpu``)."""
    if re.search(r"\bgpu\b", config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
        config.hook.pytest_deselected(items=gpu)


@pytest.fixture(scope="session", autouse=True)
def offline_hugging_face_cache(tmp_path_factory) -> Iterator[Path]:
    """Tests never reach the internet: the Hugging Face Hub in offline mode, its cache (HF_HOME)
    an empty temporary folder, no token, for this process and its subprocesses. Tests of hub
    references serve them from a local stand-in (``tests/hub_stand_in.py``)."""
    import huggingface_hub.constants as constants
    from hub_stand_in import use_hf_home

    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        use_hf_home(patch, home)
        patch.delenv("HF_ENDPOINT", raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield home


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: outputs of the original code and the tiny models (see its README)."""
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


# ----------------------------------------------------------------------------- splits


def write_split(root: Path, videos: dict, size=(12, 16), seed=0) -> Path:
    """Write a MeViS-layout split: ``meta_expressions.json`` and random JPEG frames.

    Args:
        videos: ``{video_id: {"frames": [names], "expressions": {exp_id: text}}}``; each
            expression gets ``anno_id`` ``"<video_id>-<exp_id>"``.
        size: ``(H, W)`` of the frames.
    """
    rng = np.random.default_rng(seed)
    meta = {"videos": {}}
    for video_id, spec in videos.items():
        folder = root / "JPEGImages" / video_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in spec["frames"]:
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}.jpg")
        meta["videos"][video_id] = {
            "frames": list(spec["frames"]),
            "expressions": {
                exp_id: {"exp": text, "obj_id": [0], "anno_id": [f"{video_id}-{exp_id}"]}
                for exp_id, text in spec["expressions"].items()
            },
        }
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def make_split() -> Callable[..., Path]:
    """:func:`write_split`."""
    return write_split


# ----------------------------------------------------------------------------- command line


def run_command(*args, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``python run_pipeline.py *args`` from the project root; ``check``: fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_pipeline.py"), *map(str, args)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_command`."""
    return run_command


@pytest.fixture(scope="session")
def tiny_model_overrides(fixtures_dir) -> list[str]:
    """``key=value`` overrides selecting the tiny fixture models (propagating SAM 2 weights)."""
    stage1, sam2 = fixtures_dir / "referdino_tiny", fixtures_dir / "sam2_tiny"
    return [
        f"stage1.model={stage1 / 'model.yaml'}",
        f"stage1.checkpoint={stage1 / 'referdino_checkpoint.pth'}",
        "stage1.short_side=64",
        f"stage2.model={sam2 / 'tiny_sam2.1.yaml'}",
        f"stage2.checkpoint={sam2 / 'weights_propagating.pt'}",
    ]


# ----------------------------------------------------------------------------- options


@pytest.fixture(scope="session")
def default_config():
    """``configs/pipeline.yaml`` as typed options, no overrides."""
    from referdino_plus.config import load_config

    return load_config()


@pytest.fixture(scope="session")
def tiny_stage2(fixtures_dir, default_config) -> Callable[..., object]:
    """``tiny_stage2(weights="weights_propagating", **changes)``: the default ``stage2`` options
    on the tiny SAM 2.1 of the fixtures."""

    def make(weights: str = "weights_propagating", **changes):
        sam2 = fixtures_dir / "sam2_tiny"
        return dataclasses.replace(
            default_config.stage2,
            model=str(sam2 / "tiny_sam2.1.yaml"),
            checkpoint=str(sam2 / f"{weights}.pt"),
            **changes,
        )

    return make


# ----------------------------------------------------------------------------- records


def stage1_video():
    """A small random stage-1 record: video ``vid``, 2 frames of 6x8, expressions 0 and 7."""
    from rvos import intermediates as im
    from rvos.masks import RunLengthMasks

    rng = np.random.default_rng(0)
    video = im.Stage1Video("vid", ["00000", "00001"], 6, 8)
    for exp_id in ("0", "7"):
        masks = rng.random((2, 3, 6, 8)) > 0.5
        video.expressions[exp_id] = im.ExpressionProposals(
            scores=rng.random((2, 3), dtype=np.float32),
            boxes=rng.random((2, 3, 4), dtype=np.float32),
            masks=RunLengthMasks.encode(masks),
            query_ids=np.array([0, 2, 4]),
            answer=RunLengthMasks.encode(masks.any(axis=1)),
        )
    return video


@pytest.fixture(scope="session")
def make_stage1() -> Callable[[], object]:
    """:func:`stage1_video`."""
    return stage1_video


# ----------------------------------------------------------------------------- file systems


class Tmpfs:
    """Real file systems that fill up or turn read-only (tmpfs mounts, undone after the test)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def mount(self, name: str, size: str) -> Path:
        """A tmpfs of ``size`` (``"64k"``, ``"2m"``) mounted at ``<tmp_path>/name``. Mounting
        needs root: elsewhere the test is skipped, saying why, and fails under ``CI=true``."""
        path = self.base / name
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            reason = f"cannot mount a tmpfs for this test (needs root): {proc.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        self.mounted.append(path)
        return path

    @staticmethod
    def fill(folder: Path) -> None:
        """Take every free block of ``folder``'s file system (a file ``folder/.filler``)."""
        chunk = b"\0" * 65536
        with open(folder / ".filler", "wb", buffering=0) as handle:
            for size in (len(chunk), 4096, 1):
                try:
                    while True:
                        handle.write(chunk[:size])
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise

    @staticmethod
    def read_only(folder: Path) -> None:
        """Make the tmpfs mounted at ``folder`` read-only."""
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Tmpfs]:
    """:class:`Tmpfs` mounts under ``tmp_path``."""
    mounts = Tmpfs(tmp_path)
    yield mounts
    mounts.unmount_all()
