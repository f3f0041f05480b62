"""``save_pca_grid``: originals beside their PCA feature pictures, as one PNG."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, denormalize, tensor_to_pil
from dinov2_heads.viz.caption import save_picture
from dinov2_heads.viz.pca import pca_caption

logger = logging.getLogger(__name__)


def _as_batch(pca_images: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(pca_images, Tensor):
        batch = pca_images if pca_images.ndim == 4 else pca_images.unsqueeze(0)
    else:
        pictures = list(pca_images)
        if not pictures:
            raise ValueError("got no PCA pictures to draw (an empty list); pass one per image")
        batch = torch.stack(pictures)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(
            f"expected PCA pictures of shape (B, h, w, 3) or a list of (h, w, 3), got "
            f"{tuple(batch.shape)}; pass what pca_rgb returns"
        )
    if batch.shape[0] == 0:
        raise ValueError("got no PCA pictures to draw (B = 0); pass one per image")
    return batch


def _display_images(
    images: Tensor, normalized: bool, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """(B, 3, H, W) -> float32 in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}; pass the batch "
            "that went into the backbone"
        )
    if images.dtype == torch.uint8:
        return images.float() / 255
    if normalized:
        return denormalize(images, mean, std)
    return images.float().clamp(0, 1)


def _image_format(target: Path) -> str:
    """The Pillow format name for ``target``'s suffix; PNG for a name without one."""
    if target.is_dir():
        raise IsADirectoryError(
            f"{target} is a folder; pass a file name inside it, e.g. {target / 'pca.png'}"
        )
    suffix = target.suffix.lower()
    if not suffix:
        return "PNG"
    from dinov2_heads.data.loading import require_pillow

    image = require_pillow().Image
    image_format = image.registered_extensions().get(suffix)
    if image_format is None or image_format not in image.SAVE:
        raise ValueError(
            f"cannot write a picture as {suffix!r} ({target}); use .png, .jpg or .webp"
        )
    return image_format


def save_pca_grid(
    path: str | os.PathLike[str],
    images: Tensor,
    pca_images: Tensor | Sequence[Tensor],
    *,
    normalized: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    upscale: Literal["nearest", "bilinear"] = "nearest",
    columns: int = 1,
    padding: int = 4,
    caption: str | None = None,
) -> Path:
    """Write each image beside its feature picture, upscaled to the image's size, as one picture.

    The grid has ``columns`` (image, picture) pairs per row, in batch order, on a white
    background, with ``caption`` (what the colours mean) written below it and, in a PNG, kept
    as its ``Description`` text. The file is written atomically (a temporary file, flushed,
    then renamed), so a reader never sees half a PNG. Pillow draws it; matplotlib is not used.

    Args:
        path: The file to write; missing parent folders are created. The format follows the
            suffix (``.png``, the default for a name without one; ``.jpg``, ``.webp`` and the
            other formats Pillow writes).
        images: (B, 3, H, W), the batch that went into the backbone: normalised floats
            (``normalized=True``, undone with ``mean``/``std``), floats in [0, 1]
            (``normalized=False``) or ``uint8``.
        pca_images: (B, h, w, 3) from :func:`pca_rgb`, or a list of (h, w, 3).
        normalized: Whether float ``images`` carry the ImageNet normalisation.
        mean: The normalisation mean to undo.
        std: The normalisation standard deviation to undo.
        upscale: ``"nearest"`` shows each patch as a block; ``"bilinear"`` smooths.
        columns: Pairs per row.
        padding: White pixels between and around the tiles.
        caption: Text under the grid, wrapped to its width; by default what the colours
            mean (:func:`~dinov2_heads.viz.pca_caption`; pass
            ``pca_caption(random_weights=True)`` for a random backbone); ``""`` for none.

    Returns:
        The path written.
    """
    target = Path(path)
    image_format = _image_format(target)
    pictures = _as_batch(pca_images).detach().float().cpu()
    originals = _display_images(images.detach().cpu(), normalized, mean, std)
    if originals.shape[0] != pictures.shape[0]:
        raise ValueError(
            f"got {originals.shape[0]} images but {pictures.shape[0]} PCA pictures; pass one "
            "picture per image"
        )
    if columns <= 0 or padding < 0:
        raise ValueError(f"columns must be >= 1 and padding >= 0, got {columns} and {padding}")
    if upscale not in ("nearest", "bilinear"):
        raise ValueError(f"upscale must be 'nearest' or 'bilinear', got {upscale!r}")
    batch, _, height, width = originals.shape
    big = F.interpolate(
        rearrange(pictures, "b h w c -> b c h w"),
        size=(height, width),
        mode=upscale,
        align_corners=False if upscale == "bilinear" else None,
    ).clamp(0, 1)

    rows = -(-batch // columns)
    tile_w = 2 * width + padding
    sheet = torch.ones(
        3, padding + rows * (height + padding), padding + columns * (tile_w + padding)
    )
    for index in range(batch):
        row, col = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + col * (tile_w + padding)
        sheet[:, top : top + height, left : left + width] = originals[index]
        left += width + padding
        sheet[:, top : top + height, left : left + width] = big[index]

    text = pca_caption() if caption is None else caption
    save_picture(tensor_to_pil(sheet), target, image_format, text)
    logger.debug("wrote %s (%d image(s) with their PCA pictures)", target, batch)
    return target
