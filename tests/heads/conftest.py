from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.features import Features

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "dinov2_official"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"official reference fixtures not found at {FIXTURES.resolve()}")
    return FIXTURES


def random_features(
    batch: int = 4,
    dim: int = 16,
    grid: tuple[int, int] = (2, 3),
    n_blocks: int = 1,
    seed: int = 0,
    requires_grad: bool = False,
) -> Features:
    """Features of random tokens: n blocks of (B, D) class and (B, h*w, D) patch tokens."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    classes = [torch.randn(batch, dim, generator=gen) for _ in range(n_blocks)]
    patches = [torch.randn(batch, n, dim, generator=gen) for _ in range(n_blocks)]
    if requires_grad:
        for tensor in [*classes, *patches]:
            tensor.requires_grad_(True)
    return Features.from_tokens(classes, patches, grid)
