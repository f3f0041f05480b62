"""The one check of a depth range in metres, shared by heads, data, losses and metrics."""

from __future__ import annotations

import math


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
