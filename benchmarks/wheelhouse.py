"""Wheels for an offline GPU machine whose Python already has PyTorch: made here, installed there.

A typical cluster node has PyTorch (and numpy, Pillow, transformers, scipy, OpenCV, ...) but not
SAM 2, the few packages around it, and pytest. ``make wheelhouse PYTHON_VERSION=3.12`` (on a
machine with internet) fills a folder with exactly those wheels, for that Python; ``make
gpu-check`` installs the ones the node lacks from there, offline, into a folder of its own put
first on ``sys.path``, without touching the node's packages (``--no-index --no-deps`` and an
explicit list), then runs the GPU tests with them::

    python benchmarks/wheelhouse.py download --python-version 3.12 --dest wheelhouse
    python benchmarks/wheelhouse.py install --wheelhouse wheelhouse
    python benchmarks/wheelhouse.py run --wheelhouse wheelhouse -- -m pytest -m gpu tests/gpu

Only the standard library is used here: this module runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("wheelhouse")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"  # the exact versions CI runs
DEFAULT_WHEELHOUSE = PROJECT_ROOT / "wheelhouse"  # git-ignored
MAX_TOTAL_MB = 50  # the folder travels to offline machines: keep it small
# Binary wheels are taken for these platform tags (x86-64 Linux, glibc 2.17 and newer).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


@dataclass(frozen=True)
class Wheel:
    """One distribution of the wheelhouse.

    Attributes:
        distribution: its name on PyPI.
        module: the module it installs (to tell whether a machine has it).
        build: ``True``: pure Python, built here as a wheel from its source release (sam2
            without its optional CUDA extension; releases published as source only), usable by
            any CPython 3; ``False``: downloaded as a binary or universal wheel for the target
            Python and platform.
    """

    distribution: str
    module: str
    build: bool


# What the pipeline needs beyond a PyTorch machine's usual packages (see the module docstring).
WHEELS = (
    Wheel("sam2", "sam2", build=True),
    Wheel("hydra-core", "hydra", build=False),
    Wheel("omegaconf", "omegaconf", build=False),
    Wheel("antlr4-python3-runtime", "antlr4", build=True),  # omegaconf's parser; source only
    Wheel("iopath", "iopath", build=True),  # sam2's file helper; source only
    Wheel("portalocker", "portalocker", build=False),  # iopath's lock files
    Wheel("pycocotools", "pycocotools", build=False),  # mask run-lengths in the evaluator
    Wheel("av", "av", build=False),  # video files of the demo (bundles FFmpeg: most of the size)
    Wheel("submitit", "submitit", build=False),  # launcher=slurm
    # One run per work_dir; a PyTorch machine has it (torch's dependency), maybe too old.
    Wheel("filelock", "filelock", build=False),
    # make gpu-check's test runner and its dependencies (packaging: see MACHINE_HAS). Below
    # Python 3.11 pytest also needs exceptiongroup and tomli, which this list leaves out.
    Wheel("pytest", "pytest", build=False),
    Wheel("pluggy", "pluggy", build=False),
    Wheel("iniconfig", "iniconfig", build=False),
    Wheel("pygments", "pygments", build=False),
)

# What the wheelhouse expects a PyTorch machine to have already (requirements.txt's other names).
MACHINE_HAS = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "numpy",
    "scipy",
    "pillow",
    "opencv-python-headless",
    "joblib",
    "tqdm",
    "matplotlib",
    "fonttools",  # matplotlib's dependency
    "packaging",  # transformers' dependency (and pytest's)
)

# requirements.txt's names the wheelhouse leaves out: the fonts of the pictures' text (23 MB of
# Noto; without them captions are drawn with the system's DejaVu Sans or Pillow's own font, see
# rvos/fonts.py).
LEFT_OUT = ("manimgx-fonts", "manimgx-fonts-cjk")


def normalize(name: str) -> str:
    """A distribution name as wheel file names and PEP 503 compare it (``hydra_core``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``normalized name -> version`` of the ``name==version`` lines of a constraints file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            pins[normalize(name)] = version
    return pins


def pinned(wheel: Wheel, pins: Mapping[str, str]) -> str:
    """``distribution==version`` from ``pins``.

    Raises:
        KeyError: the constraints file does not pin it.
    """
    key = normalize(wheel.distribution)
    if key not in pins:
        raise KeyError(f"{CONSTRAINTS.name} pins no version of {wheel.distribution}")
    return f"{wheel.distribution}=={pins[key]}"


def download_commands(
    python_version: str, dest: Path, pins: Mapping[str, str], python: str = sys.executable
) -> list[tuple[list[str], dict[str, str]]]:
    """The pip commands that fill ``dest``, each with its extra environment variables.

    Built wheels use this Python's pip without build isolation for sam2 (which builds against
    the installed PyTorch; ``SAM2_BUILD_CUDA=0``: no CUDA extension, a pure-Python wheel);
    downloaded ones are binary wheels for CPython ``python_version`` on :data:`PLATFORMS`.
    """
    pip = [python, "-m", "pip"]
    commands: list[tuple[list[str], dict[str, str]]] = []
    for wheel in WHEELS:
        if not wheel.build:
            continue
        isolation = ["--no-build-isolation"] if wheel.distribution == "sam2" else []
        command = [*pip, "wheel", "--no-deps", *isolation, "-w", str(dest), pinned(wheel, pins)]
        env = {"SAM2_BUILD_CUDA": "0"} if wheel.distribution == "sam2" else {}
        commands.append((command, env))
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    binaries = [pinned(w, pins) for w in WHEELS if not w.build]
    command = [
        *pip,
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *binaries,
    ]
    commands.append((command, {}))
    return commands


def wheel_versions(folder: Path) -> dict[str, str]:
    """``normalized name -> version`` of the ``*.whl`` files in ``folder``."""
    versions = {}
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        versions[normalize(name)] = version
    return versions


def total_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.whl")) / 1e6


def download(python_version: str, dest: Path) -> None:
    """Fill ``dest`` with :data:`WHEELS` for CPython ``python_version``.

    Raises:
        SystemExit: a pip command failed, a wheel is missing afterwards, or the folder is over
            :data:`MAX_TOTAL_MB`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for command, env in download_commands(python_version, dest, read_pins()):
        logger.info("%s", " ".join(command))
        result = subprocess.run(command, env={**os.environ, **env}, check=False)
        if result.returncode != 0:
            raise SystemExit(f"wheelhouse: `{' '.join(command)}` failed ({result.returncode})")
    have = wheel_versions(dest)
    absent = [w.distribution for w in WHEELS if normalize(w.distribution) not in have]
    if absent:
        raise SystemExit(f"wheelhouse: no wheel of {absent} in {dest}")
    size = total_megabytes(dest)
    logger.info(
        "wheelhouse %s: %d wheels, %.1f MB, for Python %s", dest, len(have), size, python_version
    )
    if size > MAX_TOTAL_MB:
        raise SystemExit(f"wheelhouse {dest} is {size:.1f} MB, over {MAX_TOTAL_MB} MB")


def site_folder(wheelhouse: Path, version_info: Sequence[int] = sys.version_info) -> Path:
    """Where :func:`install` puts the wheels for this Python (inside the wheelhouse)."""
    return wheelhouse / f"site-py{version_info[0]}.{version_info[1]}"


def installed_version(distribution: str) -> str | None:
    """The version of ``distribution`` this Python imports, or ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def needed(wheels: Iterable[Wheel], available: Mapping[str, str]) -> list[Wheel]:
    """The wheels to install: those whose distribution this Python lacks, or has in another
    version than the wheelhouse's (``available``: :func:`wheel_versions`)."""
    result = []
    for wheel in wheels:
        want = available.get(normalize(wheel.distribution))
        if installed_version(wheel.distribution) is None or (
            want is not None and installed_version(wheel.distribution) != want
        ):
            result.append(wheel)
    return result


def install_command(
    wheelhouse: Path, target: Path, wheels: Sequence[Wheel], python: str = sys.executable
) -> list[str]:
    """``pip install`` of exactly ``wheels`` from ``wheelhouse`` into ``target``: no index, no
    dependencies (so nothing the machine has, PyTorch above all, is replaced)."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--find-links",
        str(wheelhouse),
        "--target",
        str(target),
        *(w.distribution for w in wheels),
    ]


def install(wheelhouse: Path = DEFAULT_WHEELHOUSE) -> Path | None:
    """Make :data:`WHEELS` importable: put the wheelhouse's site folder first on ``sys.path`` and
    on ``PYTHONPATH`` (for subprocesses), and install there what this Python lacks.

    Returns:
        the site folder, or ``None`` when nothing was missing and there is no wheelhouse.
    Raises:
        SystemExit: something is missing and the wheelhouse cannot provide it (one line saying
            how to make one), or pip failed.
    """
    target = site_folder(wheelhouse)
    if target.is_dir():
        _put_first_on_path(target)
    available = wheel_versions(wheelhouse) if wheelhouse.is_dir() else {}
    missing = [w for w in needed(WHEELS, available) if installed_version(w.distribution) is None]
    if not available:
        if missing:
            raise SystemExit(
                f"missing {', '.join(w.distribution for w in missing)} and no wheels in "
                f"{wheelhouse}: run `make wheelhouse PYTHON_VERSION="
                f"{sys.version_info[0]}.{sys.version_info[1]}` where pip reaches PyPI and copy "
                f"{wheelhouse.name}/ here"
            )
        return None
    wanted = needed(WHEELS, available)
    absent = [w.distribution for w in wanted if normalize(w.distribution) not in available]
    if absent:
        raise SystemExit(f"{wheelhouse} has no wheel of {absent}: rerun `make wheelhouse`")
    if wanted:
        command = install_command(wheelhouse, target, wanted)
        logger.info("installing %s into %s", ", ".join(w.distribution for w in wanted), target)
        if subprocess.run(command, check=False).returncode != 0:
            raise SystemExit(f"`{' '.join(command)}` failed")
        _put_first_on_path(target)
        importlib.invalidate_caches()
    return target


def run(wheelhouse: Path, arguments: Sequence[str]) -> int:
    """``python arguments...`` (this Python) with :data:`WHEELS` importable (see :func:`install`).

    Returns:
        its exit status.
    """
    install(wheelhouse)
    return subprocess.run([sys.executable, *arguments], check=False).returncode


def _put_first_on_path(folder: Path) -> None:
    """``folder`` first on ``sys.path`` and ``PYTHONPATH`` (once)."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if entry not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([entry, *parts])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fill the wheelhouse (needs PyPI)")
    get.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    get.add_argument("--dest", type=Path, default=DEFAULT_WHEELHOUSE)
    put = commands.add_parser("install", help="install what this Python lacks (offline)")
    put.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    with_wheels = commands.add_parser(
        "run", help="install what this Python lacks, then run this Python with them (offline)"
    )
    with_wheels.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    with_wheels.add_argument(
        "arguments", nargs=argparse.REMAINDER, help="after --: the Python's arguments"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "download":
        download(args.python_version, args.dest)
    elif args.command == "install":
        target = install(args.wheelhouse)
        logger.info("site folder: %s", target or "(nothing needed)")
    else:
        arguments = args.arguments[1:] if args.arguments[:1] == ["--"] else args.arguments
        sys.exit(run(args.wheelhouse, arguments))


if __name__ == "__main__":
    main()
