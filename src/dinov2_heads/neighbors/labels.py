"""The class labels of a feature source, checked once for every head without training."""

from __future__ import annotations

import torch
from torch import Tensor

from dinov2_heads.cache import FeatureStore
from dinov2_heads.labels import MISSING_LABEL, check_class_labels
from dinov2_heads.neighbors.pooling import Source

__all__ = ["source_labels"]


def source_labels(
    source: Source,
    labels: Tensor | None,
    count: int,
    *,
    column: str | None = None,
    num_classes: int | None = None,
) -> tuple[Tensor, int]:
    """(M,) int64 labels of ``source`` and the class count K, or a clear error.

    Args:
        source: The features the labels belong to; a store supplies its own when ``labels``
            is ``None`` (its ``column`` when it has several).
        labels: (M,) class indices, or ``None`` for a store's.
        count: M, the number of samples.
        column: The store's label column.
        num_classes: K; ``max(label) + 1`` by default, as the official evaluations.
    """
    if labels is None:
        if not isinstance(source, FeatureStore):
            raise ValueError("labels are needed: pass a (M,) tensor of class indices")
        stored = source.labels(slice(None), column)
        if isinstance(stored, dict):
            raise ValueError(
                f"the store has label columns {sorted(stored)}; choose one with label=..."
            )
        labels = stored
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != count:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"expected labels of shape ({count},) for {count} samples, got {shape}")
    if labels.dtype == torch.bool:
        raise TypeError("labels must be integer class indices, got torch.bool")
    found = int(labels.max()) + 1 if count and not labels.is_floating_point() else 0
    if num_classes is None:
        num_classes = found
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < found:
        raise ValueError(
            f"num_classes must be an int of at least max(label) + 1 = {found}, got {num_classes!r}"
        )
    checked = check_class_labels(labels, max(num_classes, 1), batch=count)
    if bool((checked == MISSING_LABEL).any()):
        raise ValueError(
            f"labels hold {MISSING_LABEL} (no label) for some samples; drop those samples first"
        )
    return checked, num_classes
