"""dinov2-heads: train and ship small heads on a frozen DINOv2 backbone.

The root re-exports what a user reaches for first (at most 40 names); everything else is
imported from its subpackage (``dinov2_heads.cache``, ``dinov2_heads.heads`` ...) and listed
module by module in ``docs/api.md``. Importing it prints, warns and downloads nothing, and loads
no optional dependency.
"""

from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.checkpoints import (
    create_backbone,
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
    load_backbone,
    load_partial,
)
from dinov2_heads.data import get_preset
from dinov2_heads.dense import Depther, Segmenter
from dinov2_heads.errors import Dinov2HeadsError
from dinov2_heads.export import export_onnx, load_heads, save_heads
from dinov2_heads.features import Features, FrozenBackbone, attention_maps
from dinov2_heads.heads import (
    Conv1dNeck,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
    MultiHeadLoss,
    predict,
)
from dinov2_heads.neighbors import KnnClassifier, NearestNeighbors, logistic_regression
from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid

__version__ = "0.1.0.dev0"

__all__ = [
    "Conv1dNeck",
    "DPTDepthHead",
    "Depther",
    "DinoVisionTransformer",
    "Dinov2HeadsError",
    "FeatureDataset",
    "FeatureStore",
    "Features",
    "FrozenBackbone",
    "KnnClassifier",
    "LinearDepthHead",
    "LinearHead",
    "LinearProbeGrid",
    "LinearSegmentationHead",
    "MultiHead",
    "MultiHeadLoss",
    "NearestNeighbors",
    "Segmenter",
    "__version__",
    "attention_maps",
    "create_backbone",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "evaluate_grid",
    "export_onnx",
    "extract_features",
    "fit_grid",
    "get_preset",
    "load_backbone",
    "load_heads",
    "load_partial",
    "logistic_regression",
    "predict",
    "save_heads",
]
