"""``save_attention_grid``: where the class token looks, per head and on average (the DINO picture).

Each image gets one row: the image, the image with the mean map over heads laid over it, then
each head's map, colour-mapped (dark = little attention) and upscaled to the image's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, tensor_to_pil
from dinov2_heads.features.attention import ClassAttention
from dinov2_heads.viz.caption import draw_label, save_picture, text_height
from dinov2_heads.viz.colourmap import COLOURMAPS, apply_colourmap
from dinov2_heads.viz.grid import _display_images, _image_format

logger = logging.getLogger(__name__)

__all__ = ["attention_caption", "save_attention_grid"]

Scale = Literal["each", "shared"]


def attention_caption(
    block: int | None,
    heads: int,
    *,
    register_share: float | None = None,
    scale: Scale = "each",
    colourmap: str = "magma",
) -> str:
    """What an attention grid shows: block, heads, how the maps were made and scaled."""
    where = f"block {block}" if block is not None else "one block"
    text = (
        f"Class-token attention in {where}, {heads} head{'s' if heads != 1 else ''}: per image "
        "the picture, the mean map over heads overlaid, then each head's map. Softmax over all "
        "tokens; registers left out of the maps (not renormalised)."
    )
    if register_share is not None:
        text += f" The registers took {100 * register_share:.1f} % of the attention."
    ranged = "each map scaled to its own range" if scale == "each" else "one range per image"
    return text + f" Colours: {colourmap}, dark = low, {ranged}."


def save_attention_grid(
    path: str | os.PathLike[str],
    images: Tensor,
    attention: Tensor | ClassAttention,
    *,
    block: int | None = None,
    heads: Sequence[int] | None = None,
    normalized: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    colourmap: str = "magma",
    alpha: float = 0.6,
    scale: Scale = "each",
    upscale: Literal["nearest", "bilinear"] = "nearest",
    padding: int = 4,
    caption: str | None = None,
) -> Path:
    """Write each image beside its mean attention map (overlaid) and its per-head maps.

    Args:
        path: The file to write (``.png`` by default; ``.jpg``, ``.webp``, ...).
        images: (B, 3, H, W), the batch the maps were computed from: normalised floats, floats
            in [0, 1] or ``uint8`` (see ``normalized``).
        attention: (B, heads, h, w) from :func:`~dinov2_heads.features.attention_maps`, or the
            :class:`~dinov2_heads.features.ClassAttention` of ``class_attention`` (which also
            gives the block and the registers' share for the caption).
        block: The block index for the caption when ``attention`` is a tensor.
        heads: Which heads to draw (all by default); the mean is always over all heads.
        normalized: Whether float images carry the ImageNet normalisation.
        mean: The normalisation mean to undo.
        std: The normalisation standard deviation to undo.
        colourmap: A name in :data:`~dinov2_heads.viz.colourmap.COLOURMAPS`.
        alpha: Opacity of the mean map over the image, in [0, 1].
        scale: ``"each"`` stretches every map to its own min..max (faint heads stay visible);
            ``"shared"`` uses one range per image, so heads compare by brightness.
        upscale: ``"nearest"`` shows each patch as a block; ``"bilinear"`` smooths.
        padding: White pixels between and around the tiles.
        caption: Text under the grid (and a PNG's Description); by default
            :func:`attention_caption`; ``""`` for none.

    Returns:
        The path written.
    """
    target = Path(path)
    image_format = _image_format(target)
    maps, block, register_share = _unpack(attention, block)
    shown = _display_images(images.detach().cpu(), normalized, mean, std)
    chosen = _check_settings(maps, shown.shape[0], heads, colourmap, alpha, scale, upscale, padding)
    sheet = _sheet(shown, maps, chosen, colourmap, alpha, scale, upscale, padding)
    picture = tensor_to_pil(sheet)
    width = shown.shape[-1]
    names = ["image", "mean of heads"] + [f"head {h}" for h in chosen]
    for column, name in enumerate(names):
        draw_label(picture, name, (padding + column * (width + padding), padding), width)
    text = (
        attention_caption(
            block, maps.shape[1], register_share=register_share, scale=scale, colourmap=colourmap
        )
        if caption is None
        else caption
    )
    save_picture(picture, target, image_format, text or None)
    logger.debug("wrote %s (%d image(s), %d heads)", target, shown.shape[0], len(chosen))
    return target


def _unpack(
    attention: Tensor | ClassAttention, block: int | None
) -> tuple[Tensor, int | None, float | None]:
    """(B, heads, h, w) float32 maps on the CPU, the block and the registers' mean share."""
    register_share = None
    if isinstance(attention, ClassAttention):
        maps = attention.patches
        block = attention.block
        if attention.to_registers.shape[-1] > 0:
            register_share = float(attention.to_registers.sum(dim=-1).mean())
    elif isinstance(attention, Tensor):
        maps = attention
    else:
        raise TypeError(
            "expected attention maps as a (B, heads, h, w) tensor or a ClassAttention, got "
            f"{type(attention).__name__}"
        )
    if maps.ndim != 4:
        raise ValueError(
            f"expected attention maps of shape (B, heads, h, w), got {tuple(maps.shape)}; pass "
            "what attention_maps returns"
        )
    maps = maps.detach().float().cpu()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("the attention maps hold NaN or infinite values")
    return maps, block, register_share


def _check_settings(
    maps: Tensor,
    batch: int,
    heads: Sequence[int] | None,
    colourmap: str,
    alpha: float,
    scale: str,
    upscale: str,
    padding: int,
) -> list[int]:
    """The chosen head indices, or a ``ValueError`` naming the bad setting."""
    if maps.shape[0] != batch:
        raise ValueError(
            f"got {batch} images but attention maps for {maps.shape[0]}; pass the maps of these "
            "images"
        )
    total_heads = int(maps.shape[1])
    if total_heads == 0:
        raise ValueError("the attention maps have no heads (shape (B, 0, h, w))")
    chosen = list(range(total_heads)) if heads is None else list(heads)
    if not chosen or any(
        isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < total_heads for h in chosen
    ):
        raise ValueError(
            f"heads must be a non-empty sequence of head indices in [0, {total_heads}), got "
            f"{heads!r}"
        )
    if colourmap not in COLOURMAPS:
        raise ValueError(f"unknown colour map {colourmap!r}; use one of {sorted(COLOURMAPS)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if scale not in ("each", "shared"):
        raise ValueError(f"scale must be 'each' or 'shared', got {scale!r}")
    if upscale not in ("nearest", "bilinear"):
        raise ValueError(f"upscale must be 'nearest' or 'bilinear', got {upscale!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return chosen


def _sheet(
    shown: Tensor,
    maps: Tensor,
    chosen: list[int],
    colourmap: str,
    alpha: float,
    scale: str,
    upscale: str,
    padding: int,
) -> Tensor:
    """(3, H', W') white sheet: per row the image, the overlaid mean and each chosen head."""
    batch, _, height, width = shown.shape
    average = maps.mean(dim=1, keepdim=True)  # (B, 1, h, w)
    picked = maps[:, chosen]  # (B, n, h, w)
    dims = (2, 3) if scale == "each" else (1, 2, 3)
    average, picked = _stretch(average, dims=dims), _stretch(picked, dims=dims)
    big_average = _upscale(average, height, width, upscale)[:, 0]  # (B, H, W)
    big_heads = _upscale(picked, height, width, upscale)  # (B, n, H, W)

    header = text_height() + padding
    columns = 2 + len(chosen)
    sheet = torch.ones(
        3, header + padding + batch * (height + padding), padding + columns * (width + padding)
    )
    for b in range(batch):
        top = header + padding + b * (height + padding)
        overlay = (1 - alpha) * shown[b] + alpha * _colour(big_average[b], colourmap)
        tiles = [shown[b], overlay] + [_colour(m, colourmap) for m in big_heads[b]]
        for column, tile in enumerate(tiles):
            left = padding + column * (width + padding)
            sheet[:, top : top + height, left : left + width] = tile.clamp(0, 1)
    return sheet


def _stretch(maps: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Min-max scale over ``dims`` to [0, 1]; a constant map becomes 0."""
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def _upscale(maps: Tensor, height: int, width: int, mode: str) -> Tensor:
    """(B, n, h, w) -> (B, n, H, W)."""
    if mode == "nearest":
        return F.interpolate(maps, size=(height, width), mode="nearest")
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)


def _colour(values: Tensor, colourmap: str) -> Tensor:
    """(H, W) in [0, 1] -> (3, H, W) colours."""
    return apply_colourmap(values, colourmap).permute(2, 0, 1)
