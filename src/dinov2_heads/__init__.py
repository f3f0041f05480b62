"""dinov2-heads: train and ship small heads on a frozen DINOv2 backbone."""

from dinov2_heads.backbone import (
    VARIANTS,
    BackboneConfig,
    DinoVisionTransformer,
    create_backbone,
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
    get_config,
    list_variants,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "VARIANTS",
    "BackboneConfig",
    "DinoVisionTransformer",
    "__version__",
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
]
