"""Per-channel residual scaling (LayerScale)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Multiplies the last dimension by a learned vector ``gamma`` of width D.

    Args:
        dim: Width D.
        init_value: Initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
