from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.features import Features, FrozenBackbone


def official_fixture_backbone(fixtures_dir: Path, name: str) -> DinoVisionTransformer:
    """The 2-block ViT-S/14 of the fixtures (``vits14_d2`` or ``vits14_reg4_d2``)."""
    variant = "dinov2_vits14_reg" if "reg" in name else "dinov2_vits14"
    state = torch.load(fixtures_dir / f"{name}.pth", weights_only=True)
    return create_backbone(variant, checkpoint=state, depth=2)


def tiny_frozen(registers: bool = False, depth: int = 1, n_last_blocks: int = 1) -> FrozenBackbone:
    """A 64-wide random backbone, frozen."""
    torch.manual_seed(0)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    backbone = create_backbone(name, depth=depth, embed_dim=64, num_heads=2)
    return FrozenBackbone(backbone, n_last_blocks=n_last_blocks)


class TokenHead(nn.Module):
    """Returns one kind of token unchanged, so a graph's features can be compared directly."""

    def __init__(self, which: str) -> None:
        super().__init__()
        self.which = which

    def forward(self, features: Features) -> Tensor:
        if self.which == "class":
            return features.class_token
        return features.require_patch_tokens("TokenHead")[-1]
