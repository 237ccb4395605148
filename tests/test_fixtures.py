"""The reference fixtures are data from the original code: every file stays byte for byte as listed
in ``tests/fixtures/SHA256SUMS``, and the repository needs nothing outside itself to test."""

from __future__ import annotations

import hashlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Files of the folder that are ours, not the original code's outputs.
OWN_FILES = {"README.md", "SHA256SUMS"}


def read_checksums(path: Path) -> dict[str, str]:
    """``relative path -> sha256 hex`` from a ``sha256sum`` listing."""
    listed = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    return listed


def test_fixtures_are_byte_for_byte_as_listed(fixtures_dir):
    FIXTURES = fixtures_dir
    listed = read_checksums(FIXTURES / "SHA256SUMS")
    present = {
        path.relative_to(FIXTURES).as_posix()
        for path in FIXTURES.rglob("*")
        if path.is_file() and path.name not in OWN_FILES
    }
    assert present == set(listed), "files added or missing in tests/fixtures"
    changed = [
        name
        for name, digest in sorted(listed.items())
        if hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() != digest
    ]
    assert not changed, f"fixture files differ from SHA256SUMS: {changed}"


def test_nothing_reads_outside_the_repository():
    """No code, config or test refers to a folder beside the checkout (a fresh clone is enough)."""
    outside = "../" + "shared"
    offenders = [
        path.relative_to(PROJECT_ROOT).as_posix()
        for folder in (
            "referdino_plus",
            "rvos",
            "stage1_referdino",
            "stage2_sam2_refine",
            "stage3_fusion",
            "benchmarks",
            "configs",
            "tests",
            "scripts",
        )
        for path in (PROJECT_ROOT / folder).rglob("*")
        if path.suffix in {".py", ".yaml", ".sh", ".md"}
        and "fixtures" not in path.relative_to(PROJECT_ROOT).parts[1:2]
        and outside in path.read_text(encoding="utf-8", errors="replace")
    ]
    offenders += [
        name
        for name in ("Makefile", "README.md", "run_pipeline.py", "pyproject.toml", ".ci/run")
        if outside in (PROJECT_ROOT / name).read_text(encoding="utf-8")
    ]
    assert not offenders
