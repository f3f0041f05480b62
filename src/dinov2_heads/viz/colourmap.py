"""Perceptual colour maps in torch, so pictures of maps need no matplotlib.

Each map is a few anchor colours sampled from the matplotlib colour map of the same name,
joined by linear interpolation in RGB: close enough to the original to read the same way
(dark = low), and monotonic in lightness.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COLOURMAPS", "apply_colourmap"]


def _hex(colours: str) -> tuple[tuple[float, float, float], ...]:
    return tuple(
        (int(c[0:2], 16) / 255, int(c[2:4], 16) / 255, int(c[4:6], 16) / 255)
        for c in colours.split()
    )


#: Name -> anchor colours (RGB in [0, 1]), evenly spaced from 0 to 1.
COLOURMAPS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "magma": _hex("000004 1c1044 4f127b 812581 b5367a e55064 fb8761 fec287 fcfdbf"),
    "viridis": _hex("440154 472d7b 3b528b 2c728e 21918c 28ae80 5ec962 addc30 fde725"),
    "inferno": _hex("000004 1f0c48 550f6d 88226a ba3655 e35933 f98e09 f8c932 fcffa4"),
    "gray": _hex("000000 ffffff"),
}


def apply_colourmap(values: Tensor, colourmap: str = "magma") -> Tensor:
    """Values in [0, 1] of any shape (...) -> colours (..., 3) in [0, 1] (values clipped first).

    Raises:
        ValueError: For an unknown colour map name, or values that are not finite.
    """
    if colourmap not in COLOURMAPS:
        raise ValueError(f"unknown colour map {colourmap!r}; use one of {sorted(COLOURMAPS)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("cannot colour values that are NaN or infinite; clean the map first")
    anchors = torch.tensor(COLOURMAPS[colourmap], dtype=torch.float32, device=values.device)
    position = values.float().clamp(0, 1) * (len(anchors) - 1)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    weight = (position - low).unsqueeze(-1)
    return anchors[low] * (1 - weight) + anchors[low + 1] * weight
