from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import DinoVisionTransformer, create_backbone

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "dinov2_official"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"official reference fixtures not found at {FIXTURES.resolve()}")
    return FIXTURES


def randomize(model: DinoVisionTransformer, seed: int = 0) -> DinoVisionTransformer:
    """Give every parameter non-trivial random values (tokens, norms and layer scales included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("gamma"):
                param.copy_(0.5 + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim <= 1 or name in {"cls_token", "pos_embed", "register_tokens"}:
                param.copy_(0.05 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model


@pytest.fixture
def tiny() -> DinoVisionTransformer:
    """A 2-block, 64-wide ViT with a 37x37 position table, random weights."""
    return randomize(create_backbone("dinov2_vits14", depth=2, embed_dim=64, num_heads=2))
