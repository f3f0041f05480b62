"""Frozen features: the ``Features`` structure and the ``FrozenBackbone`` that makes it."""

from dinov2_heads.features.features import Features
from dinov2_heads.features.frozen import FrozenBackbone

__all__ = ["Features", "FrozenBackbone"]
