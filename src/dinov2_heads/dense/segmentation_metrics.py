"""Streaming segmentation metrics: a confusion matrix -> mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from dinov2_heads import distributed
from dinov2_heads.data.masks import IGNORE_LABEL
from dinov2_heads.dense.segmentation_loss import check_masks


@dataclass(frozen=True)
class SegmentationScores:
    """Scores over every pixel seen, as mmsegmentation reports them.

    Attributes:
        miou: Mean IoU over the classes that occur (in the labels or the predictions).
        iou: Per-class IoU, ``nan`` for a class that occurs in neither.
        accuracy: Per-class accuracy (recall), ``nan`` for a class absent from the labels.
        pixel_accuracy: Correct labelled pixels / labelled pixels.
        mean_accuracy: Mean of the per-class accuracies that are defined.
        pixels: Labelled pixels counted.
        class_names: Names for the report, or ``None``.
    """

    miou: float
    iou: tuple[float, ...]
    accuracy: tuple[float, ...]
    pixel_accuracy: float
    mean_accuracy: float
    pixels: int
    class_names: tuple[str, ...] | None = None

    def __str__(self) -> str:
        names = self.class_names or tuple(str(k) for k in range(len(self.iou)))
        width = max(len("class"), *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}"]
        for name, iou, acc in zip(names, self.iou, self.accuracy, strict=True):
            lines.append(f"{name:<{width}}  {_percent(iou)}  {_percent(acc)}")
        lines.append(
            f"mIoU {_percent(self.miou).strip()}  pixel accuracy "
            f"{_percent(self.pixel_accuracy).strip()}  mean accuracy "
            f"{_percent(self.mean_accuracy).strip()}  ({self.pixels} pixels)"
        )
        return "\n".join(lines)


def _percent(value: float) -> str:
    return "     -" if math.isnan(value) else f"{100 * value:6.2f}"


class SegmentationMetrics:
    """A K x K confusion matrix (rows: labels, columns: predictions) updated batch by batch.

    Under ``torchrun`` call :meth:`compute` (or :meth:`reduce`) on every process: the matrices
    are summed across processes first, so each one reports the scores of the whole data set.

    Args:
        num_classes: K.
        ignore_index: Label of pixels left out (255).
        class_names: K names for the printed report.

    Example:
        >>> metrics = SegmentationMetrics(2)
        >>> metrics.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]))
        >>> round(metrics.compute().miou, 3)
        0.5
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = IGNORE_LABEL,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else None
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every pixel seen."""
        self.confusion.zero_()

    def update(self, predictions: Tensor, masks: Tensor) -> None:
        """Count a batch: predictions (B, H, W) labels, or (B, K, H, W) scores, against masks.

        Raises:
            ValueError: Shapes that differ, or mask labels >= K other than ``ignore_index``.
        """
        if predictions.ndim == masks.ndim + 1:
            if predictions.shape[1] != self.num_classes:
                raise ValueError(
                    f"got scores of {predictions.shape[1]} classes for metrics of "
                    f"{self.num_classes}"
                )
            predictions = predictions.argmax(dim=1)
        if predictions.shape != masks.shape:
            raise ValueError(
                f"predictions {tuple(predictions.shape)} and masks {tuple(masks.shape)} differ "
                "in shape; resize the predictions to the masks (Segmenter does)"
            )
        check_masks(masks, self.num_classes, self.ignore_index)
        valid = masks != self.ignore_index
        labels = masks[valid].long().cpu()
        predicted = predictions[valid].long().cpu()
        if bool(((predicted < 0) | (predicted >= self.num_classes)).any()):
            raise ValueError(f"predictions hold classes outside 0..{self.num_classes - 1}")
        k = self.num_classes
        self.confusion += torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        """Sum the confusion matrices of every ``torchrun`` process (a no-op in one process)."""
        if not distributed.is_distributed():
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        total = self.confusion.to(device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.confusion = total.cpu()

    def compute(self, *, reduce: bool = True) -> SegmentationScores:
        """The scores of every pixel seen (across processes unless ``reduce=False``).

        With ``reduce=True`` the matrices are summed across processes each call, so call it
        once at the end of an evaluation (or :meth:`reset` before counting again).
        """
        if reduce:
            self.reduce()
        confusion = self.confusion.double()
        correct = confusion.diag()
        labelled = confusion.sum(dim=1)
        predicted = confusion.sum(dim=0)
        union = labelled + predicted - correct
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, correct / union.clamp(min=1), nan)
        accuracy = torch.where(labelled > 0, correct / labelled.clamp(min=1), nan)
        pixels = int(labelled.sum())
        return SegmentationScores(
            miou=_nanmean(iou),
            iou=tuple(iou.tolist()),
            accuracy=tuple(accuracy.tolist()),
            pixel_accuracy=float(correct.sum() / pixels) if pixels else float("nan"),
            mean_accuracy=_nanmean(accuracy),
            pixels=pixels,
            class_names=self.class_names,
        )


def _nanmean(values: Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else float("nan")
