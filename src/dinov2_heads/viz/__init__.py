"""Pictures of features: PCA pictures, attention maps and image-search contact sheets as PNGs."""

from dinov2_heads.viz.attention import attention_caption, save_attention_grid
from dinov2_heads.viz.colourmap import COLOURMAPS, apply_colourmap
from dinov2_heads.viz.contact_sheet import contact_sheet_caption, save_contact_sheet
from dinov2_heads.viz.grid import save_pca_grid
from dinov2_heads.viz.pca import ForegroundSplit, pca_foreground, pca_rgb, principal_components

__all__ = [
    "COLOURMAPS",
    "ForegroundSplit",
    "apply_colourmap",
    "attention_caption",
    "contact_sheet_caption",
    "pca_foreground",
    "pca_rgb",
    "principal_components",
    "save_attention_grid",
    "save_contact_sheet",
    "save_pca_grid",
]
