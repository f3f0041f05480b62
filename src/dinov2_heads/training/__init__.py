"""Training heads: the grid of linear heads and the training loops."""

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
    "OFFICIAL_LEARNING_RATES",
    "FitHistory",
    "GridResult",
    "GridResults",
    "GridSGD",
    "HeadSpec",
    "LinearProbeGrid",
    "evaluate_grid",
    "features_of",
    "fit_grid",
    "split_batch",
    "train_one_epoch",
]
