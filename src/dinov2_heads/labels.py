"""Class labels: the value that means "no label for this head", the one check of a batch, and
the check that a label column keeps its kind."""

from __future__ import annotations

import torch
from torch import Tensor

#: A per-sample label that drops out of a head's loss and metrics: empty manifest cells and
#: blanked synthetic labels read as this, and the losses ignore it (the PyTorch
#: ``ignore_index`` convention).
MISSING_LABEL = -100

__all__ = ["MISSING_LABEL", "check_class_labels", "check_label_dtype"]


def check_class_labels(
    labels: object,
    num_classes: int,
    *,
    batch: int | None = None,
    missing: int = MISSING_LABEL,
    negative_is_missing: bool = False,
    context: str = "",
    hint: str = "convert whole-number labels with labels.long()",
    shape_hint: str = "",
) -> Tensor:
    """Single-label class indices (B,) as int64, or a clear error saying what is wrong.

    Every class-label check of the library goes through here: the heads' losses, the grid's
    loss and its evaluation.

    Args:
        labels: (B,) integer class indices; ``missing`` marks a sample without a label.
        num_classes: K; a known label must lie in ``0 .. K - 1``.
        batch: B, when it is known (the logits' batch size); the shape is then checked.
        missing: The "no label" value (``ignore_index`` of the losses).
        negative_is_missing: Treat every negative label as missing (evaluation does).
        context: Put in front of each message, e.g. ``"head 'brand': "``.
        hint: What to do when the labels are not integers.
        shape_hint: What to do when the labels are (B, K) rather than (B,).

    Returns:
        The labels as int64, on their device.

    Raises:
        TypeError: Not a tensor of integers.
        ValueError: Not of shape (B,), or a known label outside ``0 .. K - 1``.
    """
    if batch is not None and isinstance(labels, Tensor) and labels.shape != (batch,):
        extra = f"; {shape_hint}" if shape_hint and labels.ndim == 2 else ""
        raise ValueError(
            f"{context}expected labels of shape (B,) = ({batch},), got {tuple(labels.shape)}{extra}"
        )
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(
            f"{context}labels must be integer class indices of shape (B,), got {kind}; {hint}"
        )
    labels = labels.long()
    known = labels >= 0 if negative_is_missing else labels != missing
    bad = known & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"{context}label {int(labels[bad][0])} is out of range for {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, or {missing} for a sample without a label)"
        )
    return labels


def check_label_dtype(labels: Tensor, column: torch.dtype, *, name: str = "labels") -> None:
    """Refuse a batch of labels that a column of dtype ``column`` would not hold as they are.

    A column takes its dtype from the first batch. Float labels into an integer column would
    be cut towards zero (2.7 -> 2) without a word, so they are refused, whole numbers or not:
    a mix of kinds is a bug in the data. Integer labels into a float column are exact (up to
    2**24) and pass.

    Args:
        labels: (B, ...) one batch of one label column.
        column: The dtype the column stores (int64 or float32).
        name: The column's name, for the message.

    Raises:
        TypeError: Float labels for an integer column.
    """
    if not labels.is_floating_point() or column.is_floating_point:
        return
    fractional = labels[labels != labels.trunc()]
    example = f" such as {fractional.flatten()[0].item():g}" if fractional.numel() else ""
    raise TypeError(
        f"{name}: a batch of {str(labels.dtype).removeprefix('torch.')} labels{example} came "
        f"after {str(column).removeprefix('torch.')} labels, and the column keeps the first "
        "batch's kind, so they would be cut to integers. Give every batch one kind: integers "
        "for class indices (labels.long() for whole numbers), or floats from the first batch "
        "on for targets such as regression values (labels.float())"
    )
