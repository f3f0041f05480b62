"""Pictures of label maps: palette PNGs of class indices and colour overlays on the image."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.data.functional import pil_to_tensor, tensor_to_pil
from dinov2_heads.data.loading import require_pillow

if TYPE_CHECKING:
    from PIL import Image

Palette = Sequence[Sequence[int]]


def _check_labels(labels: Tensor, palette: Palette) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 2 or labels.is_floating_point():
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"expected one label map (H, W) of class indices, got {shape}")
    if not palette:
        raise ValueError("the palette is empty; give one (r, g, b) colour per class")
    labels = labels.detach().cpu().long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= 256):
        raise ValueError(
            f"label maps are drawn as 8-bit palette images: classes must be 0..255, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return labels


def label_image(labels: Tensor, palette: Palette) -> Image.Image:
    """A palette (mode ``"P"``) image whose pixels are the class indices of ``labels`` (H, W).

    Saved as PNG, it opens as a coloured picture in any viewer and reads back as the indices
    (:func:`~dinov2_heads.data.load_mask`). Class k is drawn in ``palette[k]``; classes past
    the palette are black.
    """
    pil = require_pillow()
    labels = _check_labels(labels, palette)
    height, width = labels.shape
    image = pil.Image.frombytes("P", (width, height), labels.to(torch.uint8).numpy().tobytes())
    flat = [int(c) for colour in palette[:256] for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def colour_labels(labels: Tensor, palette: Palette) -> Tensor:
    """``uint8`` (3, H, W) colours of a label map (H, W); classes past the palette are black."""
    labels = _check_labels(labels, palette)
    table = torch.zeros(256, 3, dtype=torch.uint8)
    colours = torch.tensor([list(c) for c in palette[:256]], dtype=torch.uint8)
    table[: len(colours)] = colours
    return table[labels].permute(2, 0, 1).contiguous()


def overlay_labels(
    image: Image.Image | Tensor, labels: Tensor, palette: Palette, *, alpha: float = 0.5
) -> Image.Image:
    """The image with its label map blended on top: ``(1 - alpha) * image + alpha * colours``.

    Args:
        image: A Pillow image or a (3, H, W) tensor (``uint8``, or float in [0, 1]).
        labels: (H, W) class indices, the image's size.
        palette: A colour per class.
        alpha: Weight of the label colours.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pixels = pil_to_tensor(image) if not isinstance(image, Tensor) else image
    if pixels.dtype != torch.uint8:
        pixels = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    colours = colour_labels(labels, palette)
    if tuple(colours.shape[-2:]) != tuple(pixels.shape[-2:]):
        raise ValueError(
            f"the label map is {tuple(colours.shape[-2:])} but the image is "
            f"{tuple(pixels.shape[-2:])}; predict at the image's size"
        )
    blended = (1 - alpha) * pixels.cpu().float() + alpha * colours.float()
    return tensor_to_pil(blended.round().to(torch.uint8))


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write a Pillow image as PNG atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
