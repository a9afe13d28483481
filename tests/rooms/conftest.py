"""Fixtures of the rooms tests."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.env import short_dir


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short directory under /tmp (for Unix socket paths), removed afterwards."""
    path = short_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
