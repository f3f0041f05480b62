"""The native DINOv2 backbone: configs, the model, and builders by hub name."""

from dinov2_heads.backbone.builders import (
    create_backbone,
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
)
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
    "create_backbone",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "get_config",
    "list_variants",
    "variant_name",
]
