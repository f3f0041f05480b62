"""What a head was given: :class:`Features`, or a clear ``TypeError`` for anything else."""

from __future__ import annotations

from torch import Tensor

from dinov2_heads.features.features import Features


def require_features(value: object, who: str) -> Features:
    """``value`` if it is :class:`Features`, else a ``TypeError`` that says what ``who`` needs.

    A plain tensor is the usual mistake (the official linear classifier takes one): the message
    says where features come from and that only ``LinearHead`` also reads a tensor.
    """
    if isinstance(value, Features):
        return value
    got = (
        f"a tensor of shape {tuple(value.shape)}"
        if isinstance(value, Tensor)
        else f"a {type(value).__name__}"
    )
    raise TypeError(
        f"{who} reads Features (class and patch tokens with their grid), got {got}; pass "
        "FrozenBackbone(backbone)(images) or a batch of a feature cache (LinearHead alone also "
        "takes a plain (B, in_features) tensor)"
    )
