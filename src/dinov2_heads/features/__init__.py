"""Frozen features: the ``Features`` structure and the ``FrozenBackbone`` that makes it."""

from dinov2_heads.features.features import Features

__all__ = ["Features"]
