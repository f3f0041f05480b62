"""Heads without training: k-NN classification and logistic regression on frozen features."""

from dinov2_heads.neighbors.knn import KnnClassifier, KnnEvaluation
from dinov2_heads.neighbors.logistic import (
    OFFICIAL_C,
    LogisticRegressionResult,
    fit_logistic,
    logistic_regression,
)
from dinov2_heads.neighbors.topk import TopK, chunked_topk

__all__ = [
    "OFFICIAL_C",
    "KnnClassifier",
    "KnnEvaluation",
    "LogisticRegressionResult",
    "TopK",
    "chunked_topk",
    "fit_logistic",
    "logistic_regression",
]
