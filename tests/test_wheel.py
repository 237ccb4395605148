"""A wheel of the project carries every config and the entry point, and runs from any folder."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and runs the command line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What a checkout has at its top beside the project's files (never part of a wheel).
NOT_SOURCES = {".venv", ".git", "build", "dist", "work", "submissions", "checkpoints", "data"}
NOT_SOURCES |= {".pytest_cache", ".ruff_cache", "referdino_plus.egg-info"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ignore: the top-level :data:`NOT_SOURCES`, caches everywhere."""
    ignored = {name for name in names if name == "__pycache__"}
    if Path(folder) == PROJECT_ROOT:
        ignored |= NOT_SOURCES & set(names)
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps .`` of a copy of the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(PROJECT_ROOT, source, symlinks=True, ignore=_not_sources)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = (tmp / "dist").glob("referdino_plus-*.whl")
    return path


def test_wheel_holds_every_config_and_the_entry_point(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    configs = sorted(PROJECT_ROOT.glob("configs/**/*.yaml"))
    assert len(configs) > 10
    for path in configs:
        relative = path.relative_to(PROJECT_ROOT).as_posix()
        assert f"referdino_plus/{relative}" in names, relative
    for path in PROJECT_ROOT.glob("configs/referdino/*.yaml"):
        assert f"stage1_referdino/configs/{path.name}" in names
    assert "referdino-plus = referdino_plus.cli:main" in scripts


@pytest.mark.slow
def test_installed_wheel_runs_the_pipeline_from_another_folder(
    wheel, tmp_path, make_split, tiny_model_overrides
):
    # A fresh environment that sees this one's third-party packages but not the project's
    # checkout (a path entry in a .pth file does not run the editable install's own .pth).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import referdino_plus; print(referdino_plus.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where

    root = make_split(
        tmp_path / "split",
        {"vid": {"frames": ["00000", "00001"], "expressions": {"0": "the dog"}}},
        size=(48, 64),
    )
    proc = subprocess.run(
        [str(venv / "bin" / "referdino-plus"), "--cpu", f"data.root={root}"]
        + [*tiny_model_overrides, "stage1.top_k=2", "name=wheel"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("stage1.zip", "stage2.zip", "fused.zip"):
        with zipfile.ZipFile(elsewhere / "submissions" / "wheel" / name) as archive:
            assert sorted(archive.namelist()) == ["vid/0/00000.png", "vid/0/00001.png"]
    assert (elsewhere / "work" / "wheel" / "config.yaml").is_file()
