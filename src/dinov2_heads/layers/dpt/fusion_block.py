"""``FeatureFusionBlock``: DPT's fusion of a coarser decoder map with a finer skip map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.layers.dpt.conv_module import ConvModule
from dinov2_heads.layers.dpt.residual_conv_unit import PreActResidualConvUnit


class FeatureFusionBlock(nn.Module):
    """Add a refined skip map, refine again, upsample 2x, project with a 1x1 convolution.

    ``x = x + res_conv_unit1(skip)`` (the skip resized bilinearly to x's size first,
    ``align_corners=False``: a copy when the sizes agree), ``x = res_conv_unit2(x)``, then a
    2x bilinear upsampling with ``align_corners=True`` and the 1x1 ``project`` convolution. The
    first fusion block of a DPT decoder has no skip, hence no ``res_conv_unit1``
    (``with_skip=False``), as in the official head whose ``fusion_blocks[0].res_conv_unit1`` is
    ``None``.

    Args:
        channels: C of both inputs and of the output.
        with_skip: Whether the block takes a skip map (and has ``res_conv_unit1``).
    """

    res_conv_unit1: PreActResidualConvUnit | None

    def __init__(self, channels: int, *, with_skip: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.project = ConvModule(channels, channels, 1)
        self.res_conv_unit1 = PreActResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = PreActResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """(B, C, h, w) and an optional skip (B, C, h', w') -> (B, C, 2h, 2w)."""
        if skip is not None:
            if self.res_conv_unit1 is None:
                raise ValueError(
                    "this fusion block was built with with_skip=False and takes no skip map"
                )
            # Always resized, an exact copy at equal sizes: a branch on the sizes would be fixed
            # by torch.export to the traced grid's parity, and the exported graph would fail at
            # grids of the other parity.
            skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, with_skip={self.res_conv_unit1 is not None}"
