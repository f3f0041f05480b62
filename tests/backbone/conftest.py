from __future__ import annotations

import pytest

from dinov2_heads import DinoVisionTransformer, create_backbone
from tests.helpers import randomize


@pytest.fixture
def tiny() -> DinoVisionTransformer:
    """A 2-block, 64-wide ViT with a 37x37 position table, random weights."""
    return randomize(create_backbone("dinov2_vits14", depth=2, embed_dim=64, num_heads=2))
