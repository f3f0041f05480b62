"""The checks of depth ranges and depth maps in metres, shared by heads, data, losses, metrics."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_depth_range(min_depth: float, max_depth: float, *, who: str) -> tuple[float, float]:
    """``(min_depth, max_depth)`` as floats, or a ``ValueError`` naming ``who``.

    Both must be finite numbers with ``0 <= min_depth < max_depth``.
    """
    for name, value in (("min_depth", min_depth), ("max_depth", max_depth)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{who}: {name} must be a finite number of metres, got {value!r}")
    if not 0 <= min_depth < max_depth:
        raise ValueError(
            f"{who}: expected 0 <= min_depth < max_depth, got min_depth={min_depth} and "
            f"max_depth={max_depth}; the official NYU heads use 0.001..10, KITTI 0.001..80"
        )
    return float(min_depth), float(max_depth)


def valid_depth_mask(
    target: Tensor, *, min_depth: float = 0.0, max_depth: float | None = None
) -> Tensor:
    """(B, 1, H, W) bool: the pixels of ``target`` that hold a measured depth.

    A pixel is valid when its depth is finite, above ``min_depth`` (0, the "no measurement"
    value of NYU and KITTI, is never valid) and, when ``max_depth`` is given, at most
    ``max_depth``: the official losses' ``target > 0`` and ``target <= max_depth``.
    """
    valid = torch.isfinite(target) & (target > min_depth)
    if max_depth is not None:
        valid &= target <= max_depth
    return valid


def check_depth_map(target: Tensor, *, who: str) -> None:
    """A ``ValueError`` naming ``who`` when ``target`` holds negative depths."""
    if not target.is_floating_point():
        raise TypeError(f"{who}: depth maps must be floating point metres, got {target.dtype}")
    if bool((target < 0).any()):
        raise ValueError(
            f"{who}: the depth map holds negative values (smallest {float(target.min()):.4g}); "
            "depths are metres >= 0, with 0 for pixels without a measurement"
        )
