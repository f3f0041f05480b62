"""``PreActResidualConvUnit``: DPT's residual unit, ReLU before each convolution."""

from __future__ import annotations

from torch import Tensor, nn

from dinov2_heads.layers.dpt.conv_module import ConvModule


class PreActResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with two 3x3 convolutions without bias.

    Keys ``conv1.conv.weight`` and ``conv2.conv.weight``, as the official unit (which has no
    norm layer in the DINOv2 heads).

    Args:
        channels: C, the same on input and output.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvModule(channels, channels, 3, padding=1, bias=False, activation="before")
        self.conv2 = ConvModule(channels, channels, 3, padding=1, bias=False, activation="before")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        return x + self.conv2(self.conv1(x))
