"""Fog over a picture whose depth is known: far things fade into the fog's colour.

Aerial perspective, one of the oldest depth cues painters use: light from a point ``d`` metres
away keeps ``t = exp(-d / distance)`` of its colour and the rest comes from the fog,
``fogged = t * colour + (1 - t) * fog``. Pixels without a depth (0: the sky) are infinitely far
and take the fog's colour. The depth demo draws its street scenes in fog so that the distance
shows in each patch's colours, which even a randomly initialised backbone passes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: Metres over which the fog dims a colour to 1/e (dense fog: about 23 m of visibility).
FOG_DISTANCE = 6.0
#: The fog's colour, a pale grey-blue (RGB, 0-255).
FOG_COLOUR = (205, 212, 222)


def add_fog(
    image: Tensor,
    depth: Tensor,
    *,
    distance: float = FOG_DISTANCE,
    colour: Sequence[int] = FOG_COLOUR,
) -> Tensor:
    """``image`` seen through fog: ``uint8`` (3, H, W) and depth (1, H, W) -> ``uint8`` (3, H, W).

    Args:
        image: The picture, ``uint8`` (3, H, W).
        depth: Its depth in metres (1, H, W) or (H, W); 0 (no depth) is infinitely far.
        distance: Metres over which a colour fades to 1/e of itself.
        colour: The fog's RGB colour, 0-255.

    Raises:
        ValueError: Shapes that do not match, a non-positive distance or a bad colour.
    """
    if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, Tensor) else image
        raise ValueError(f"add_fog needs a uint8 image (3, H, W), got {got}")
    depth = depth[0] if depth.ndim == 3 else depth
    if depth.ndim != 2 or tuple(depth.shape) != tuple(image.shape[-2:]):
        raise ValueError(
            f"add_fog needs a depth map (1, H, W) of the image's size {tuple(image.shape[-2:])}, "
            f"got {tuple(depth.shape)}"
        )
    if isinstance(distance, bool) or not math.isfinite(distance) or distance <= 0:
        raise ValueError(f"the fog distance must be a positive number of metres, got {distance!r}")
    if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
        raise ValueError(f"the fog colour must be three ints in 0-255, got {colour!r}")
    far = depth <= 0
    kept = torch.where(far, torch.zeros(()), torch.exp(-depth.float().clamp(min=0) / distance))
    fog = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    fogged = kept * image.float() + (1 - kept) * fog
    return fogged.round().clamp(0, 255).to(torch.uint8)
