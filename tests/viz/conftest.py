"""Patch tokens with a known layout: a background, and a foreground made of four parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Scene:
    tokens: Tensor  # (B, N, D)
    grid: tuple[int, int]
    foreground: Tensor  # (B, h, w) bool
    part: Tensor  # (B, h, w) int, -1 on the background, else 0-3


def structured_tokens(seed: int = 0, noise: float = 0.01) -> Scene:
    """Three 6x8 grids. Each has a foreground rectangle away from the border, split into four
    quadrants ("parts"). Foreground tokens sit 5 units from the background along one axis, and
    each part 2 units along its own axis, so the first principal component is foreground vs
    background and the next three tell the parts apart."""
    generator = torch.Generator().manual_seed(seed)
    batch, h, w, dim = 3, 6, 8, 24
    boxes = [(1, 5, 2, 6), (1, 4, 1, 5), (2, 5, 3, 7)]  # top, bottom, left, right (exclusive)
    foreground = torch.zeros(batch, h, w, dtype=torch.bool)
    part = torch.full((batch, h, w), -1)
    for b, (top, bottom, left, right) in enumerate(boxes):
        foreground[b, top:bottom, left:right] = True
        mid_r, mid_c = (top + bottom) // 2, (left + right) // 2
        for r in range(top, bottom):
            for c in range(left, right):
                part[b, r, c] = 2 * int(r >= mid_r) + int(c >= mid_c)
    offset = torch.randn(dim, generator=generator)
    tokens = offset + noise * torch.randn(batch, h, w, dim, generator=generator)
    tokens[..., 0] += 5.0 * foreground
    for k in range(4):
        tokens[..., 1 + k] += 2.0 * (part == k)
    return Scene(tokens.reshape(batch, h * w, dim), (h, w), foreground, part)
