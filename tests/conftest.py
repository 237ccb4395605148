"""Shared test fixtures: paths to the reference outputs of the original code."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` next to the project: outputs of the original code (see its README)."""
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES
