"""The two-layer GELU feed-forward network of ViT-S/B/L."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.layers.fast import bypassable, fast_path, needs_grad

_REDUCED = (torch.bfloat16, torch.float16)


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
        fc1 = self.fc1
        if (
            fc1.bias is not None
            and x.dtype in _REDUCED
            and fast_path(x)
            and not needs_grad(x, fc1.weight, fc1.bias)  # the fused call has no backward
            and bypassable(fc1, nn.Linear)
            and bypassable(self.act, nn.GELU)
        ):
            # fc1, its bias and the GELU as one cuBLASLt call (tanh GELU, see layers.fast).
            flat = x.reshape(-1, x.shape[-1])
            hidden = torch._addmm_activation(fc1.bias, flat, fc1.weight.t(), use_gelu=True)
            out = self.fc2(hidden)
            return out.reshape(*x.shape[:-1], out.shape[-1])  # -1 fails for 0 rows
        return self.fc2(self.act(self.fc1(x)))
