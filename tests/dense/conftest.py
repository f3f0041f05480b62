from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import DinoVisionTransformer, create_backbone
from tests.helpers import DENSE_FIXTURES


@pytest.fixture(scope="session")
def dense_fixtures_dir() -> Path:
    """The official dense-head fixtures; tests that need them skip when the folder is absent."""
    if not DENSE_FIXTURES.is_dir():
        pytest.skip(f"dense reference fixtures not found at {DENSE_FIXTURES.resolve()}")
    return DENSE_FIXTURES


@pytest.fixture(scope="session")
def official_vits14(dense_fixtures_dir: Path) -> DinoVisionTransformer:
    """The fixtures' ViT-S/14: float16 weights upcast to float32, as the references used."""
    state_dict = torch.load(dense_fixtures_dir / "vits14_backbone_fp16.pth", weights_only=True)
    backbone = create_backbone("dinov2_vits14", device="meta")
    backbone.load_state_dict(
        {key: value.float() for key, value in state_dict.items()}, strict=True, assign=True
    )
    return backbone.eval()


def tiny_backbone(depth: int = 3, registers: int = 0, seed: int = 0) -> DinoVisionTransformer:
    """A 32-wide ViT with visible random tokens, for behaviour tests."""
    from tests.helpers import randomize

    torch.manual_seed(seed)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    model = create_backbone(name, depth=depth, embed_dim=32, num_heads=2, img_size=56)
    return randomize(model, seed)
