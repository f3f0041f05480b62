"""The two-layer GELU feed-forward network of ViT-S/B/L."""

from __future__ import annotations

from torch import Tensor, nn


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``: (B, T, D) -> (B, T, D).

    Args:
        in_features: Input width D.
        hidden_features: Hidden width (``mlp_ratio * D`` in the official models).
        bias: Whether both linear layers have a bias.
    """

    def __init__(self, in_features: int, hidden_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
