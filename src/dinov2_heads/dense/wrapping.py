"""What the dense predictors share: checking and normalising images, wrapping the backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.features.frozen import FrozenBackbone, check_image_dtype


def dense_images(images: Tensor, frozen: FrozenBackbone, who: str) -> Tensor:
    """Images (B, 3, H, W) checked, and ``uint8`` pixels normalised, for a dense predictor.

    Float images are taken as normalised and come back as they are. ``uint8`` pixels 0..255
    are moved to the backbone's device and normalised there with the ``FrozenBackbone``'s
    ``mean`` and ``std`` in float32 (:meth:`FrozenBackbone.normalize_pixels`), before any
    padding, flip or rescale: those work on normalised images, where padding with 0 is padding
    with the mean colour. On the CPU the result equals normalising first, bit for bit.

    Args:
        images: (B, 3, H, W) normalised floats or ``uint8`` pixels.
        frozen: The predictor's backbone, whose device, mean and std are used.
        who: The predictor's class name, for the messages.

    Returns:
        (B, 3, H, W) float images.

    Raises:
        ValueError: Not a batch (B, 3, H, W).
        TypeError: Integer images other than ``uint8``.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        fix = (
            "; add a batch dimension with images.unsqueeze(0) for one image"
            if isinstance(images, Tensor) and images.ndim == 3
            else ""
        )
        raise ValueError(f"expected images of shape (B, 3, H, W), got {shape}{fix}")
    check_image_dtype(images, who, frozen.mean, frozen.std)
    if images.dtype == torch.uint8:
        return frozen.normalize_pixels(images)
    return images


def frozen_for(backbone: nn.Module, head: nn.Module) -> FrozenBackbone:
    """``backbone`` as a ``FrozenBackbone`` that extracts what ``head`` reads.

    A bare backbone is wrapped with :meth:`FrozenBackbone.for_heads`; a ``FrozenBackbone``
    is checked, and one that lacks a block the head needs is a ``ValueError`` naming the fix.
    """
    if not isinstance(head, nn.Module):
        raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
    if not isinstance(backbone, FrozenBackbone):
        return FrozenBackbone.for_heads(backbone, head)
    required = getattr(head, "required_blocks", None)
    if callable(required) and backbone.depth is not None:
        missing = backbone.serves(required(backbone.depth))
        if missing:
            raise ValueError(
                f"the FrozenBackbone does not extract the blocks {list(missing)} that "
                f"{type(head).__name__} reads; build it with "
                "FrozenBackbone.for_heads(backbone, head) or pass the bare backbone"
            )
    return backbone
