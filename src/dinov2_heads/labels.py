"""Class labels: the value that means "no label for this head", and the one check of a batch."""

from __future__ import annotations

from torch import Tensor

#: A per-sample label that drops out of a head's loss and metrics: empty manifest cells and
#: blanked synthetic labels read as this, and the losses ignore it (the PyTorch
#: ``ignore_index`` convention).
MISSING_LABEL = -100

__all__ = ["MISSING_LABEL", "check_class_labels"]


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
