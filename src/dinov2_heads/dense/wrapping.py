"""What the dense predictors share: checking their images and wrapping their backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.features.frozen import FrozenBackbone


def check_images(images: Tensor) -> None:
    """``ValueError`` unless ``images`` is a batch (B, 3, H, W); ``TypeError`` unless float."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        fix = (
            "; add a batch dimension with images.unsqueeze(0) for one image"
            if isinstance(images, Tensor) and images.ndim == 3
            else ""
        )
        raise ValueError(f"expected normalised images of shape (B, 3, H, W), got {shape}{fix}")
    if not torch.is_floating_point(images):
        # uint8 pixels included: padding, flips and rescaling work on normalised images
        # (padding with 0 is padding with the mean colour), so they are normalised first.
        raise TypeError(
            f"expected normalised float images, got {images.dtype}; dense prediction pads and "
            "rescales normalised images, so uint8 pixels 0..255 are not normalised here: "
            "normalise them first with dinov2_heads.data.normalize(images) (or a Preprocess "
            "with normalize=True)"
        )


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
