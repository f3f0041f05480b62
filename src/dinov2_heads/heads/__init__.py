"""Heads that read :class:`~dinov2_heads.features.Features`, their losses and predictions."""

from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.linear import LinearHead, linear_input

__all__ = ["ClassNamesMixin", "LinearHead", "linear_input"]
