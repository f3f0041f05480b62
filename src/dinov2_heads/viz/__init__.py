"""Pictures of features: PCA of patch tokens mapped to RGB, and a PNG grid to look at them."""

from dinov2_heads.viz.grid import save_pca_grid
from dinov2_heads.viz.pca import ForegroundSplit, pca_foreground, pca_rgb, principal_components

__all__ = ["ForegroundSplit", "pca_foreground", "pca_rgb", "principal_components", "save_pca_grid"]
