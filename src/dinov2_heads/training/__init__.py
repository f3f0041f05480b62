"""Training heads: the grid of linear heads, the training loops, dense heads' loss and scores,
and the depth metrics."""

from dinov2_heads.training.dense_evaluation import (
    DenseScores,
    dense_metrics,
    evaluate_dense,
    resize_dense_output,
)
from dinov2_heads.training.dense_loss import DenseLoss, dense_head_loss
from dinov2_heads.training.dense_tasks import DENSE_TASKS, DenseTask, dense_task
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
    "DENSE_TASKS",
    "DEPTH_METRICS",
    "OFFICIAL_LEARNING_RATES",
    "DenseLoss",
    "DenseScores",
    "DenseTask",
    "DepthMetrics",
    "FitHistory",
    "GridResult",
    "GridResults",
    "GridSGD",
    "HeadSpec",
    "LinearProbeGrid",
    "dense_head_loss",
    "dense_metrics",
    "dense_task",
    "depth_metrics",
    "evaluate_dense",
    "evaluate_grid",
    "features_of",
    "fit_grid",
    "format_depth_metrics",
    "resize_dense_output",
    "split_batch",
    "train_one_epoch",
]
