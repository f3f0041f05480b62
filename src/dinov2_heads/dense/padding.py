"""Centre padding of images to a multiple of the patch size, as the official dense heads do."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.dense.shapes import known_equal

#: (left, right, top, bottom) zeros added around an image, the order ``F.pad`` takes.
Padding = tuple[int, int, int, int]


def center_pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """Zeros to add before and after a side of ``size`` pixels to reach a multiple.

    The official ``CenterPadding``: the total ``ceil(size / multiple) * multiple - size`` is
    split with the smaller half (``pad // 2``) first, so an odd total puts the extra pixel
    after (right or bottom). Under ``torch.export`` ``size`` may be symbolic (a
    ``torch.SymInt``), and so are the amounts.
    """
    if isinstance(size, bool) or not isinstance(size, int | torch.SymInt) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    # ceil(size / multiple) * multiple - size, in integer arithmetic that symbolic sizes keep.
    pad = ((size - 1) // multiple + 1) * multiple - size
    return pad // 2, pad - pad // 2


def center_padding(height: int, width: int, multiple: int) -> Padding:
    """(left, right, top, bottom) padding that makes an H x W image a multiple of ``multiple``."""
    top, bottom = center_pad_amounts(height, multiple)
    left, right = center_pad_amounts(width, multiple)
    return left, right, top, bottom


def center_pad(images: Tensor, multiple: int = 14) -> Tensor:
    """Pad images (B, C, H, W) with zeros to sides that are multiples of ``multiple``.

    Zeros of the normalised image, as the official hook pads after normalisation. An image
    whose sides are already multiples comes back unchanged (the same tensor).

    Returns:
        (B, C, H', W') with H' and W' the next multiples of ``multiple``.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {shape}; add a batch dimension with "
            "images.unsqueeze(0) for one image"
        )
    padding = center_padding(images.shape[-2], images.shape[-1], multiple)
    if known_equal(padding, (0, 0, 0, 0)):
        return images
    return F.pad(images, padding)
