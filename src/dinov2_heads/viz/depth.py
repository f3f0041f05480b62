"""Depth maps as pictures: a perceptual colour map, the image beside it, and a colour bar.

Pillow only (the ``images`` extra); matplotlib is not needed. Near is bright and far is dark
by default, the usual convention for monocular depth; pixels without a depth (0, NaN) are
drawn in ``invalid_colour``.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, tensor_to_pil
from dinov2_heads.data.loading import require_pillow
from dinov2_heads.viz.colourmap import apply_colourmap
from dinov2_heads.viz.grid import _display_images, _image_format

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


_BAR_WIDTH = 14
_LABEL_WIDTH = 64
_TICKS = 5


def _as_map(depth: Tensor) -> Tensor:
    """(H, W) float32 from (H, W), (1, H, W) or (1, 1, H, W)."""
    values = depth.detach().float().cpu()
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(
            f"expected one depth map (H, W), (1, H, W) or (1, 1, H, W), got {tuple(depth.shape)}"
        )
    return values


def depth_range(depth: Tensor) -> tuple[float, float]:
    """(smallest, largest) valid depth of a map; (0, 1) when no pixel holds a depth."""
    values = _as_map(depth)
    valid = values[torch.isfinite(values) & (values > 0)]
    if valid.numel() == 0:
        return 0.0, 1.0
    low, high = float(valid.min()), float(valid.max())
    return (low, high) if high > low else (low, low + 1.0)


def colourize_depth(
    depth: Tensor,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    colourmap: str = "magma",
    near_is_bright: bool = True,
    invalid_colour: Sequence[float] = (0.0, 0.0, 0.0),
) -> Tensor:
    """A depth map in metres as an RGB picture (3, H, W), floats in [0, 1].

    Args:
        depth: (H, W), (1, H, W) or (1, 1, H, W); 0, negative and non-finite values have no
            depth and take ``invalid_colour``.
        vmin: The depth at one end of the colour map; default the smallest valid depth.
        vmax: The depth at the other end; default the largest valid depth.
        colourmap: A name in :data:`~dinov2_heads.viz.COLOURMAPS`.
        near_is_bright: Map ``vmin`` to the bright end (``False``: ``vmax`` is bright).
        invalid_colour: RGB in [0, 1] for pixels without a depth.
    """
    values = _as_map(depth)
    low, high = _limits(values, vmin, vmax)
    invalid = ~(torch.isfinite(values) & (values > 0))
    t = torch.where(invalid, torch.zeros(()), (values - low) / (high - low))
    if near_is_bright:
        t = 1 - t
    colours = apply_colourmap(t, colourmap)
    fill = torch.tensor([float(c) for c in invalid_colour], dtype=torch.float32)
    if fill.shape != (3,) or not bool(((fill >= 0) & (fill <= 1)).all()):
        raise ValueError(f"invalid_colour must be three values in [0, 1], got {invalid_colour!r}")
    colours[invalid] = fill
    return colours.permute(2, 0, 1).contiguous()


def _limits(values: Tensor, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    auto_low, auto_high = depth_range(values)
    low = auto_low if vmin is None else float(vmin)
    high = auto_high if vmax is None else float(vmax)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(
            f"the colour range needs finite vmin < vmax, got vmin={low} and vmax={high}"
        )
    return low, high


def save_depth_picture(
    path: str | os.PathLike[str],
    depth: Tensor,
    image: Tensor | None = None,
    *,
    normalized: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    vmin: float | None = None,
    vmax: float | None = None,
    colourmap: str = "magma",
    near_is_bright: bool = True,
    colour_bar: bool = True,
    padding: int = 4,
) -> Path:
    """Write a colour-mapped depth map, the image beside it and a colour bar in metres.

    The file is written atomically; its format follows the suffix (PNG by default).

    Args:
        path: The file to write; missing parent folders are created.
        depth: One map (H, W), (1, H, W) or (1, 1, H, W) in metres (what
            :class:`~dinov2_heads.dense.Depther` returns for one image).
        image: The image (3, H, W) or (1, 3, H, W) to show on the left, or ``None``:
            normalised floats (``normalized=True``), floats in [0, 1] or ``uint8``. A depth
            map of another size is resized to the image's (nearest neighbour).
        normalized: Whether a float ``image`` carries the normalisation ``mean`` / ``std``.
        mean: The normalisation mean to undo.
        std: The normalisation standard deviation to undo.
        vmin: See :func:`colourize_depth`.
        vmax: See :func:`colourize_depth`.
        colourmap: See :func:`colourize_depth`.
        near_is_bright: See :func:`colourize_depth`.
        colour_bar: Draw the colour bar with five labelled depths on the right.
        padding: White pixels between and around the parts.

    Returns:
        The path written.
    """
    target = Path(path)
    image_format = _image_format(target)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    values = _as_map(depth)
    parts: list[Tensor] = []
    if image is not None:
        shown = _display_images(image.detach().cpu(), normalized, mean, std)
        if shown.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {shown.shape[0]}")
        shown = shown[0]
        if tuple(shown.shape[-2:]) != tuple(values.shape):
            values = F.interpolate(values[None, None], size=shown.shape[-2:], mode="nearest")[0, 0]
        parts.append(shown)
    low, high = _limits(values, vmin, vmax)
    parts.append(
        colourize_depth(
            values, vmin=low, vmax=high, colourmap=colourmap, near_is_bright=near_is_bright
        )
    )
    height = int(values.shape[0])
    if colour_bar:
        ramp = torch.linspace(high, low, height)[:, None].expand(height, _BAR_WIDTH)
        parts.append(
            colourize_depth(
                ramp, vmin=low, vmax=high, colourmap=colourmap, near_is_bright=near_is_bright
            )
        )
    width = padding + sum(int(p.shape[-1]) + padding for p in parts)
    width += _LABEL_WIDTH if colour_bar else 0
    sheet = torch.ones(3, height + 2 * padding, width)
    left = padding
    for part in parts:
        sheet[:, padding : padding + height, left : left + part.shape[-1]] = part
        left += int(part.shape[-1]) + padding
    picture = tensor_to_pil(sheet)
    if colour_bar:
        _draw_labels(picture, low, high, x=left - padding + 3, top=padding, height=height)
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    logger.info("wrote %s (depth %.3g to %.3g m)", target, low, high)
    return target


def _draw_labels(
    picture: Image.Image, low: float, high: float, *, x: int, top: int, height: int
) -> None:
    """Ticks and depths in metres beside the bar: ``high`` at the top, ``low`` at the bottom."""
    pil = require_pillow()
    import PIL.ImageFont

    draw = pil.ImageDraw.Draw(picture)
    font = PIL.ImageFont.load_default()
    for k in range(_TICKS):
        fraction = k / (_TICKS - 1)
        y = top + round(fraction * (height - 1))
        value = high - fraction * (high - low)
        draw.line([(x - 3, y), (x, y)], fill=(0, 0, 0))
        text = f"{value:.3g} m"
        # Keep the text inside the picture at the top and bottom ticks.
        box = draw.textbbox((0, 0), text, font=font)
        text_height = box[3] - box[1]
        text_top = min(max(y - text_height // 2 - box[1], 0), top + height - text_height)
        draw.text((x + 2, text_top), text, fill=(0, 0, 0), font=font)
