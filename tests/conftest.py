"""Fixtures shared by the server, integration and e2e suites."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    """The daemon's state directory for one test (created by whoever needs it)."""
    return tmp_path / "var"


@pytest.fixture
def repo_root() -> Path:
    return REPO
