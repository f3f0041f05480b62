"""The native DINOv2 backbone: its configurations and the model.

Building a variant with weights from a file is
:func:`dinov2_heads.checkpoints.create_backbone` (and the hub-named builders beside it), one
layer up: this package reads no files.
"""

from dinov2_heads.backbone.config import (
    VARIANTS,
    BackboneConfig,
    get_config,
    list_variants,
    variant_name,
)
from dinov2_heads.backbone.vision_transformer import DinoVisionTransformer

__all__ = [
    "VARIANTS",
    "BackboneConfig",
    "DinoVisionTransformer",
    "get_config",
    "list_variants",
    "variant_name",
]
