"""Building blocks of the DPT decoder (Ranftl et al., 2021) with the official DINOv2 names.

Each block keeps the parameter names of ``dinov2/hub/depth/decode_heads.py``, so the released
``*_dpt_head.pth`` files load into :class:`~dinov2_heads.heads.DPTDepthHead` unchanged.
"""

from dinov2_heads.layers.dpt.conv_module import ConvModule
from dinov2_heads.layers.dpt.fusion_block import FeatureFusionBlock
from dinov2_heads.layers.dpt.head_depth import HeadDepth
from dinov2_heads.layers.dpt.reassemble import ReassembleBlocks
from dinov2_heads.layers.dpt.residual_conv_unit import PreActResidualConvUnit

__all__ = [
    "ConvModule",
    "FeatureFusionBlock",
    "HeadDepth",
    "PreActResidualConvUnit",
    "ReassembleBlocks",
]
