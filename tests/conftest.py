"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VECTORS_DIR = PROJECT_ROOT.parent / "shared" / "vectors" / "agentroom-v2"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The reference's v2 vectors, read in place; a missing directory fails loudly, never skips."""
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"protocol vectors not found at {VECTORS_DIR}: clone with ../shared beside the project")
    return VECTORS_DIR
