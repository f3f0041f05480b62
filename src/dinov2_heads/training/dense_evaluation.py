"""``evaluate_dense``: segmentation and depth heads scored on cached features or images."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.dense.segmentation_metrics import SegmentationMetrics, SegmentationScores
from dinov2_heads.training.dense_loss import SINGLE_HEAD
from dinov2_heads.training.dense_tasks import require_dense_task
from dinov2_heads.training.depth_metrics import DepthMetrics
from dinov2_heads.training.loop import features_of
from dinov2_heads.training.watched_batches import watched_batches
from dinov2_heads.watchdog import STALL_WARNING, check_stall_warning

__all__ = ["DenseScores", "dense_metrics", "evaluate_dense", "resize_dense_output"]

#: What :func:`evaluate_dense` gives per head: segmentation scores, or the depth metrics by
#: name (``DEPTH_METRICS``).
DenseScores = SegmentationScores | dict[str, float]


def resize_dense_output(head: nn.Module, output: Tensor, size: tuple[int, int]) -> Tensor:
    """A dense head's output at the labels' (H, W), as ``Segmenter`` / ``Depther`` give it.

    Segmentation logits (B, K, h, w) are resized bilinearly (``align_corners=False``); depth
    (B, 1, h, w) is clamped to the head's ``[min_depth, max_depth]`` first, then resized the
    same way. For images whose sides are multiples of 14 (no padding) this is what the
    predictors compute.
    """
    if require_dense_task(head) == "depth":
        output = output.clamp(
            min=float(getattr(head, "min_depth")),  # noqa: B009 - every depth head has them
            max=float(getattr(head, "max_depth")),  # noqa: B009
        )
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output.float(), size=size, mode="bilinear", align_corners=False)


def dense_metrics(head: nn.Module, name: str = "head") -> SegmentationMetrics | DepthMetrics:
    """Empty metrics for ``head``: ``SegmentationMetrics`` over its K classes (with its class
    names), or ``DepthMetrics`` over its ``[min_depth, max_depth]``."""
    if require_dense_task(head, name) == "segmentation":
        names = getattr(head, "class_names", None)
        return SegmentationMetrics(
            int(getattr(head, "num_classes")),  # noqa: B009 - segmentation heads have K
            class_names=tuple(names) if names is not None else None,
        )
    return DepthMetrics(
        min_depth=float(getattr(head, "min_depth")),  # noqa: B009 - every depth head has them
        max_depth=float(getattr(head, "max_depth")),  # noqa: B009
    )


def evaluate_dense(
    heads: nn.Module,
    batches: Iterable[Any],
    *,
    labels: Mapping[str, str] | None = None,
    frozen: nn.Module | None = None,
    stall_warning: float | None = STALL_WARNING,
) -> dict[str, DenseScores]:
    """Score dense heads on ``(features or images, targets)`` batches, in eval mode.

    Each head's output is brought to the targets' size with :func:`resize_dense_output`, then
    counted: mIoU, per-class IoU and pixel accuracy for segmentation heads (255 left out),
    AbsRel, RMSE, delta1 and the rest for depth heads (each image's valid pixels, averaged
    over images). The heads' training mode is restored afterwards.

    Args:
        heads: A :class:`~dinov2_heads.heads.MultiHead` of dense heads, or one dense head
            (scored as ``"head"``).
        batches: A DataLoader of (features, targets), such as ``store.dataset().loader(8)``,
            or of (images, targets) with ``frozen``. Targets: one tensor every head is scored
            on, or a dict by label name.
        labels: Per head name, the key of dict targets it is scored on (default: its name).
        frozen: The frozen backbone, when the batches hold images.
        stall_warning: Seconds without a new batch before a warning that says whether the
            evaluation waits for the ``DataLoader`` or is still at work on a batch, and what
            to try (as :func:`~dinov2_heads.training.train_one_epoch` warns); ``None``: none.

    Returns:
        ``{name: SegmentationScores}`` for segmentation heads and ``{name: {metric: value}}``
        for depth heads.

    Raises:
        WorkerDiedError: A ``DataLoader`` worker was killed, crashed or exited; the message
            names how it ended and the fixes.
        SharedMemoryError: A worker ran out of shared memory handing a batch over.
    """
    stall_warning = check_stall_warning(stall_warning)
    members = dict(heads.items()) if isinstance(heads, nn.ModuleDict) else {SINGLE_HEAD: heads}
    metrics = {name: dense_metrics(head, name) for name, head in members.items()}
    keys = {name: (labels or {}).get(name, name) for name in members}
    parameter = next(heads.parameters(), None)
    device = parameter.device if parameter is not None else None
    was_training = heads.training
    heads.eval()
    try:
        reading = watched_batches(batches, loop="evaluation", stall_warning=stall_warning)
        with torch.no_grad(), reading as watched:
            for batch in watched:
                if not isinstance(batch, tuple | list) or len(batch) < 2:
                    raise TypeError(
                        "evaluate_dense needs labelled batches: (features, targets) or (images, "
                        f"targets), got {type(batch).__name__}"
                    )
                inputs, targets = batch[0], batch[1]
                outputs = heads(features_of(inputs, frozen, device))
                if isinstance(outputs, Tensor):
                    outputs = {SINGLE_HEAD: outputs}
                for name, head in members.items():
                    target = targets[keys[name]] if isinstance(targets, Mapping) else targets
                    target = target.to(outputs[name].device)
                    size = (int(target.shape[-2]), int(target.shape[-1]))
                    metrics[name].update(resize_dense_output(head, outputs[name], size), target)
    finally:
        heads.train(was_training)
    return {name: metric.compute() for name, metric in metrics.items()}
