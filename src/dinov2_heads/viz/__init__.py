"""Pictures of features and predictions: PCA pictures, attention maps, image-search contact
sheets, depth maps, and label maps as palette PNGs and overlays."""

from dinov2_heads.viz.attention import attention_caption, save_attention_grid
from dinov2_heads.viz.colourmap import COLOURMAPS, apply_colourmap
from dinov2_heads.viz.contact_sheet import contact_sheet_caption, save_contact_sheet
from dinov2_heads.viz.depth import colourize_depth, depth_range, save_depth_picture
from dinov2_heads.viz.grid import save_pca_grid
from dinov2_heads.viz.pca import (
    ForegroundSplit,
    pca_caption,
    pca_foreground,
    pca_rgb,
    principal_components,
)
from dinov2_heads.viz.segmentation import colour_labels, label_image, overlay_labels

__all__ = [
    "COLOURMAPS",
    "ForegroundSplit",
    "apply_colourmap",
    "attention_caption",
    "colour_labels",
    "colourize_depth",
    "contact_sheet_caption",
    "depth_range",
    "label_image",
    "overlay_labels",
    "pca_caption",
    "pca_foreground",
    "pca_rgb",
    "principal_components",
    "save_attention_grid",
    "save_contact_sheet",
    "save_depth_picture",
    "save_pca_grid",
]
