from __future__ import annotations

import pytest
import torch

from dinov2_heads import DinoVisionTransformer, create_backbone


def tiny_backbone(registers: int = 0, depth: int = 2, seed: int = 0) -> DinoVisionTransformer:
    """A 64-wide ViT with a 4x4 position table (56 px) and visible random tokens."""
    torch.manual_seed(seed)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    model = create_backbone(name, depth=depth, embed_dim=64, num_heads=2, img_size=56)
    with torch.no_grad():
        model.cls_token.normal_(std=0.5)
        if model.register_tokens is not None:
            model.register_tokens.normal_(std=0.5)
    return model


@pytest.fixture
def tiny() -> DinoVisionTransformer:
    return tiny_backbone()


@pytest.fixture
def tiny_reg() -> DinoVisionTransformer:
    return tiny_backbone(registers=4)
