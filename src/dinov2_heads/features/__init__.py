"""Frozen features: the ``Features`` structure, the ``FrozenBackbone`` that makes it, and the
class token's attention maps."""

from dinov2_heads.features.attention import ClassAttention, attention_maps, class_attention
from dinov2_heads.features.features import Features
from dinov2_heads.features.frozen import FrozenBackbone

__all__ = ["ClassAttention", "Features", "FrozenBackbone", "attention_maps", "class_attention"]
