"""Fixtures for the application tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory unrelated to the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder
