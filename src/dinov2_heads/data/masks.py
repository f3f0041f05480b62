"""Reading segmentation masks: class indices per pixel, 255 meaning "not labelled"."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor

from dinov2_heads.data.loading import UnreadableImageError, require_pillow

if TYPE_CHECKING:
    from PIL import Image

#: The mask value of pixels without a label: they drop out of the loss and the metrics.
IGNORE_LABEL = 255

PathLike = str | os.PathLike[str]


def load_mask(path: PathLike, *, palette: Sequence[Sequence[int]] | None = None) -> Tensor:
    """A mask file as class indices (H, W) int64.

    Palette PNGs (Pillow mode ``"P"``, as PASCAL VOC ships them) are read as their indices,
    not their colours; greyscale masks (8 or 16 bit) as their values. A colour (RGB) mask needs
    ``palette``: pixels of colour ``palette[k]`` become k, and white-on-black edges of the
    VOC kind are whatever colour the palette gives them (add ``(255, 255, 255)`` at index 255
    to read them as ignored).

    Args:
        path: The mask file.
        palette: For RGB masks: the colour of each class index.

    Raises:
        UnreadableImageError: The file cannot be read (the message says "cannot read mask").
        ValueError: An RGB mask without ``palette``, or with colours not in it.
    """
    pil = require_pillow()
    try:
        with pil.Image.open(path) as opened:
            opened.load()
            mask = mask_from_pil(opened, palette=palette)
    except ValueError as error:
        raise ValueError(f"mask {os.fspath(path)}: {error}") from error
    except Exception as error:
        raise UnreadableImageError(
            path, f"{type(error).__name__}: {error}", "fix or replace the file", "mask"
        ) from error
    return mask


def mask_from_pil(image: Image.Image, *, palette: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Class indices (H, W) int64 of a Pillow mask; see :func:`load_mask`."""
    width, height = image.size
    mode = image.mode
    if mode in ("P", "L"):
        # A palette image's bytes are its indices; its palette only says how to draw them.
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.reshape(height, width).long()
    if mode == "1":
        return mask_from_pil(image.convert("L")).div(255, rounding_mode="floor")
    if mode.startswith("I"):
        pixels = torch.frombuffer(bytearray(image.convert("I").tobytes()), dtype=torch.int32)
        return pixels.reshape(height, width).long()
    if mode in ("RGB", "RGBA"):
        if palette is None:
            raise ValueError(
                f"a colour ({mode}) mask needs palette=[(r, g, b) of class 0, ...] to be read "
                "as class indices; or save masks as palette (mode P) or greyscale PNGs of "
                "indices"
            )
        return _colours_to_indices(image.convert("RGB"), palette)
    raise ValueError(f"masks of Pillow mode {mode!r} are not supported; save them as PNG indices")


def _colours_to_indices(image: Image.Image, palette: Sequence[Sequence[int]]) -> Tensor:
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).long()
    rgb = rearrange(pixels, "(h w c) -> h w c", h=height, w=width, c=3)
    codes = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    lookup: dict[int, int] = {}
    for index, colour in enumerate(palette):
        r, g, b = (int(v) for v in colour)
        lookup.setdefault(r * 65536 + g * 256 + b, index)
    values, inverse = torch.unique(codes, return_inverse=True)
    unknown = [int(v) for v in values.tolist() if int(v) not in lookup]
    if unknown:
        shown = ", ".join(str((v >> 16, (v >> 8) & 255, v & 255)) for v in unknown[:5])
        raise ValueError(
            f"{len(unknown)} colour(s) of the mask are not in the palette: {shown}"
            f"{', ...' if len(unknown) > 5 else ''}"
        )
    mapped = torch.tensor([lookup[int(v)] for v in values.tolist()], dtype=torch.long)
    return mapped[inverse]
