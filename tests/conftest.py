from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official reference fixtures; tests that need them skip when the folder is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official reference fixtures not found at {FIXTURES.resolve()}")
    return FIXTURES
