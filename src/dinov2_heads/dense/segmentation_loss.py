"""Per-pixel cross-entropy for segmentation heads, with ignored pixels and class weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.data.masks import IGNORE_LABEL


def check_masks(masks: Tensor, num_classes: int, ignore_index: int = IGNORE_LABEL) -> None:
    """``ValueError`` unless every mask value is a class index below K or ``ignore_index``."""
    if masks.is_floating_point():
        raise TypeError(f"masks hold integer class indices, got dtype {masks.dtype}")
    bad = (masks != ignore_index) & ((masks < 0) | (masks >= num_classes))
    if bool(bad.any()):
        values = [int(v) for v in torch.unique(masks[bad])[:5].tolist()]
        raise ValueError(
            f"masks hold labels {values} outside 0..{num_classes - 1} (K = {num_classes}); "
            f"use {ignore_index} for pixels without a label, or build the head with more classes"
        )


def segmentation_loss(
    logits: Tensor,
    masks: Tensor,
    *,
    class_weights: Sequence[float] | Tensor | None = None,
    ignore_index: int = IGNORE_LABEL,
) -> Tensor:
    """Mean per-pixel cross-entropy of logits against masks.

    The logits are resized bilinearly (``align_corners=False``) to the mask size, as the
    official decode head does in training. Pixels labelled ``ignore_index`` drop out; the mean
    is over the other pixels, weighted by ``class_weights`` as ``F.cross_entropy`` weights (the
    official setting ``avg_non_ignore=True``). A batch without any labelled pixel gives 0.

    Args:
        logits: (B, K, h, w), on the patch grid or any size.
        masks: (B, H, W) class indices, ``ignore_index`` where unlabelled.
        class_weights: K per-class factors for imbalanced classes.
        ignore_index: The "no label" value (255).

    Raises:
        ValueError: Shapes that do not fit, or labels >= K other than ``ignore_index``.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits (B, K, h, w), got {tuple(logits.shape)}")
    if masks.ndim != 3 or masks.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected masks (B, H, W) for {logits.shape[0]} logit maps, got {tuple(masks.shape)}"
        )
    num_classes = logits.shape[1]
    check_masks(masks, num_classes, ignore_index)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (num_classes,):
            raise ValueError(
                f"class_weights must hold one factor per class ({num_classes}), got "
                f"{tuple(weight.shape)}"
            )
    if tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    targets = masks.long()
    if not bool((targets != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_index)


class SegmentationLoss(nn.Module):
    """:func:`segmentation_loss` as a module with its class weights stored.

    Args:
        class_weights: K per-class factors, or ``None``.
        ignore_index: The "no label" value (255).
    """

    class_weights: Tensor | None

    def __init__(
        self,
        class_weights: Sequence[float] | Tensor | None = None,
        *,
        ignore_index: int = IGNORE_LABEL,
    ) -> None:
        super().__init__()
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
                raise ValueError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
        self.register_buffer("class_weights", weights, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, masks: Tensor) -> Tensor:
        """The loss of logits (B, K, h, w) against masks (B, H, W)."""
        return segmentation_loss(
            logits, masks, class_weights=self.class_weights, ignore_index=self.ignore_index
        )
