from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import FIXTURES


def _interpret_triton_kernels_without_a_gpu() -> None:
    """Without a GPU, the Triton kernels run under Triton's CPU interpreter, so that their
    tests run (in CI too) instead of skipping.

    Set for the whole test process, and for the processes it starts, before any test module is
    imported: Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, which the library
    does on its first launch, and the kernel tests decide whether to skip when they are
    collected. A value already set is left as it is (``TRITON_INTERPRET=0`` skips the kernel
    tests); with a GPU the kernels run on it; without Triton nothing is set and the kernel
    tests skip.
    """
    if "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None:
        return
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_interpret_triton_kernels_without_a_gpu()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official reference fixtures; tests that need them skip when the folder is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official reference fixtures not found at {FIXTURES.resolve()}")
    return FIXTURES
