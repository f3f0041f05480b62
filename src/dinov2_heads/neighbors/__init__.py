"""Heads without training: k-NN classification, logistic regression and image search."""

from dinov2_heads.neighbors.image_paths import store_image_paths
from dinov2_heads.neighbors.knn import KnnClassifier, KnnEvaluation
from dinov2_heads.neighbors.logistic import (
    OFFICIAL_C,
    LogisticRegressionResult,
    fit_logistic,
    logistic_regression,
)
from dinov2_heads.neighbors.search import (
    NearestNeighbors,
    Neighbor,
    SearchResult,
    source_fingerprint,
)
from dinov2_heads.neighbors.topk import TopK, chunked_topk

__all__ = [
    "OFFICIAL_C",
    "KnnClassifier",
    "KnnEvaluation",
    "LogisticRegressionResult",
    "NearestNeighbors",
    "Neighbor",
    "SearchResult",
    "TopK",
    "chunked_topk",
    "fit_logistic",
    "logistic_regression",
    "source_fingerprint",
    "store_image_paths",
]
