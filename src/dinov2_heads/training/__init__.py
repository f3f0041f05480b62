"""Training heads: the grid of linear heads, the training loops and the depth metrics."""

from dinov2_heads.training.depth_metrics import (
    DEPTH_METRICS,
    DepthMetrics,
    depth_metrics,
    format_depth_metrics,
)
from dinov2_heads.training.grid import (
    OFFICIAL_LEARNING_RATES,
    GridResult,
    GridResults,
    HeadSpec,
    LinearProbeGrid,
)
from dinov2_heads.training.loop import (
    FitHistory,
    evaluate_grid,
    features_of,
    fit_grid,
    split_batch,
    train_one_epoch,
)
from dinov2_heads.training.optim import GridSGD

__all__ = [
    "DEPTH_METRICS",
    "OFFICIAL_LEARNING_RATES",
    "DepthMetrics",
    "FitHistory",
    "GridResult",
    "GridResults",
    "GridSGD",
    "HeadSpec",
    "LinearProbeGrid",
    "depth_metrics",
    "evaluate_grid",
    "features_of",
    "fit_grid",
    "format_depth_metrics",
    "split_batch",
    "train_one_epoch",
]
