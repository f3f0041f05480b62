"""``ConvModule``: a 2D convolution with an optional ReLU before or after it."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

#: Where the ReLU goes: nowhere, on the input (pre-activation) or on the output.
Activation = Literal["none", "before", "after"]


class ConvModule(nn.Module):
    """``Conv2d`` with a ReLU before it, after it, or none; its one parameter holder is ``conv``.

    The official DPT head builds its convolutions with mmcv's ``ConvModule`` (without a norm
    layer in DINOv2), whose state dict keys are ``conv.weight`` and ``conv.bias``; this module
    keeps those keys. The official ReLU is in place; here it is not, which gives the same
    numbers without overwriting the caller's tensor.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        padding: Zero padding on each side.
        stride: Convolution stride.
        bias: Whether the convolution has a bias.
        activation: ``"none"``, ``"before"`` (ReLU on the input) or ``"after"`` (on the
            output).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        stride: int = 1,
        bias: bool = True,
        activation: Activation = "none",
    ) -> None:
        super().__init__()
        if activation not in ("none", "before", "after"):
            raise ValueError(f"activation must be 'none', 'before' or 'after', got {activation!r}")
        self.activation = activation
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, h, w) -> (B, C_out, h', w')."""
        if self.activation == "before":
            x = F.relu(x)
        x = self.conv(x)
        if self.activation == "after":
            x = F.relu(x)
        return x

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
