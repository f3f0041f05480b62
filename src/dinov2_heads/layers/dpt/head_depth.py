"""``HeadDepth``: the last layers of the DPT depth decoder, down to one channel."""

from __future__ import annotations

from torch import Tensor, nn


class HeadDepth(nn.Module):
    """3x3 conv to C/2, 2x bilinear upsampling (``align_corners=True``), 3x3 conv to 32, ReLU,
    1x1 conv to 1 channel.

    Keys ``head.0.*``, ``head.2.*`` and ``head.4.*`` (``head.1`` is the upsampling and
    ``head.3`` the ReLU), as the official ``HeadDepth``. The output is not yet a depth: the DPT
    head applies ``relu(.) + min_depth``.

    Args:
        channels: C of the input.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"HeadDepth needs at least 2 input channels, got {channels}")
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, 1, 2h, 2w)."""
        return self.head(x)
