"""Building blocks of the DINOv2 vision transformer, with the official parameter names."""

from dinov2_heads.layers.attention import Attention
from dinov2_heads.layers.block import Block
from dinov2_heads.layers.layer_scale import LayerScale
from dinov2_heads.layers.mlp import Mlp
from dinov2_heads.layers.patch_embed import PatchEmbed
from dinov2_heads.layers.swiglu import SwiGLUFFNFused, swiglu_hidden_features

__all__ = [
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFNFused",
    "swiglu_hidden_features",
]
