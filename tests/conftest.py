"""Fixtures shared by the whole suite."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.env import short_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = PROJECT_ROOT.parent / "shared" / "vectors" / "agentroom-v2"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference's v2 vectors, read in place; a missing directory fails loudly, never skips."""
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"protocol vectors not found at {VECTORS_DIR}: clone with ../shared beside the project")
    return VECTORS_DIR


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short directory under /tmp (Unix socket paths must be short), removed afterwards."""
    path = short_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
