"""Image operations in plain torch: conversion, resize, centre crop, normalisation, valid sizes.

Every function takes one image (3, H, W) or a batch (B, 3, H, W). Images are either ``uint8``
(0-255, as decoded) or floating point (0-1 before normalisation). Shrinking a ``uint8`` image on
the CPU gives Pillow's bicubic pixels to within one grey level, which is what the official DINOv2
transforms (torchvision on PIL images) produce; enlarging stays close (a mean difference under
half a level, a few edge pixels off by more). On a GPU, ``uint8`` images take two float passes
rounded in between, which give the CPU's pixels to within one level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from dinov2_heads.data.pillow import require_pillow, to_rgb

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: ImageNet channel means (RGB), the normalisation every DINOv2 checkpoint was trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (RGB).
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: DINOv2's patch size: valid image sides are multiples of it.
PATCH_SIZE = 14


def pil_to_tensor(image: Image.Image) -> Tensor:
    """A Pillow image as a ``uint8`` (3, H, W) tensor, converted to RGB first if needed.

    16-bit greyscale images keep the high byte of each pixel (Pillow's own conversion would
    clip them at 255). Needs no NumPy: the pixels are copied straight from Pillow's buffer.
    """
    image = to_rgb(image)
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return rearrange(pixels, "(h w c) -> c h w", h=height, w=width, c=3).contiguous()


def tensor_to_pil(image: Tensor) -> Image.Image:
    """A (3, H, W) image, ``uint8`` or float in [0, 1], as an RGB Pillow image.

    Float values outside [0, 1] are clipped.
    """
    pil = require_pillow()
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one RGB image of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = int(image.shape[1]), int(image.shape[2])
    # (3, H, W) -> interleaved (H, W, 3) bytes, the layout Pillow reads.
    pixels = rearrange(image.cpu(), "c h w -> h w c").contiguous()
    return pil.Image.frombytes("RGB", (width, height), pixels.numpy().tobytes())


def to_float(image: Tensor) -> Tensor:
    """``uint8`` images to float32 in [0, 1]; float images are returned as float32 unchanged."""
    if image.dtype == torch.uint8:
        return image.float().div_(255)
    if not image.is_floating_point():
        raise TypeError(
            f"expected a uint8 or floating point image tensor, got dtype {image.dtype}; "
            "convert it with .float() / 255 first"
        )
    return image.float()


def _check_image(image: Tensor, who: str) -> None:
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"{who} expects an RGB image (3, H, W) or a batch (B, 3, H, W), got shape "
            f"{tuple(image.shape)}"
        )


def _as_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        values = tuple(size)
        if len(values) != 2:
            raise ValueError(f"{name} must be an int or an (H, W) pair, got {size!r}")
        pair = (int(values[0]), int(values[1]))
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {pair[0]}x{pair[1]} (H x W)")
    return pair


def resize(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Resize to exactly ``size`` = (H, W) with antialiased bicubic interpolation.

    ``uint8`` images stay ``uint8`` (rounded and clipped like Pillow's output); float images stay
    float and are not clipped, so resize before normalising if the range matters.

    Args:
        image: (3, H, W) or (B, 3, H, W).
        size: The output (H, W), or one int for a square.

    Returns:
        The resized image(s), same dtype and leading dimensions.
    """
    _check_image(image, "resize")
    height, width = _as_pair(size, "size")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    if batch.dtype == torch.uint8 and batch.device.type == "cpu":
        # The CPU uint8 kernel rounds and clips after each separable pass, as Pillow does.
        out = F.interpolate(
            batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
    elif batch.dtype == torch.uint8:
        out = _resize_uint8_in_float(batch, height, width)
    else:
        out = F.interpolate(
            batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
    return out if image.ndim == 4 else out[0]


def _resize_uint8_in_float(batch: Tensor, height: int, width: int) -> Tensor:
    """The CPU uint8 kernel's result where there is none (GPUs): two passes in float32.

    Width first, then height, each rounded and clipped to 0-255, as Pillow does; one pass over
    both axes would keep the first pass's overshoot and differ by up to 15 grey levels.
    """
    out = batch.float()
    for size in ((int(batch.shape[-2]), width), (height, width)):
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bicubic", antialias=True, align_corners=False)
            out = out.round_().clamp_(0, 255)
    return out.to(torch.uint8)


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The (H, W) that makes the shorter side ``shorter`` and keeps the aspect ratio.

    The longer side is truncated, as torchvision's ``Resize(int)`` does, so the official
    evaluation transform gets the same size: a 375x500 image becomes 256x341.
    """
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def resize_shorter_side(image: Tensor, shorter: int) -> Tensor:
    """Resize so that the shorter side is ``shorter`` pixels, keeping the aspect ratio."""
    _check_image(image, "resize_shorter_side")
    if shorter <= 0:
        raise ValueError(f"the shorter side must be positive, got {shorter}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    return resize(image, shorter_side_size(height, width, shorter))


def center_crop(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Crop the central (H, W) region; a side smaller than the crop is zero-padded first.

    The offsets are rounded as torchvision's ``CenterCrop`` rounds them, so crops match the
    official evaluation transform pixel for pixel.
    """
    _check_image(image, "center_crop")
    crop_h, crop_w = _as_pair(size, "crop size")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        # F.pad order: (left, right, top, bottom).
        image = F.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = int(image.shape[-2]), int(image.shape[-1])
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return image[..., top : top + crop_h, left : left + crop_w]


def normalize(
    image: Tensor,
    mean: Sequence[float] | Tensor = IMAGENET_MEAN,
    std: Sequence[float] | Tensor = IMAGENET_STD,
) -> Tensor:
    """``(x - mean) / std`` per channel, after converting ``uint8`` to float in [0, 1].

    ``mean`` and ``std`` are three numbers each, or float32 tensors of three values already on
    the image's device, which are used without a copy (on a GPU, building them from numbers
    waits for the device on every call).

    Returns:
        A float32 tensor of the input's shape.
    """
    _check_image(image, "normalize")
    x = to_float(image)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean_t) / std_t


def check_mean_std(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``mean`` and ``std`` as three floats each (RGB), or the error that says what is wrong.

    The one check of every place that normalises with a given mean and std
    (:class:`~dinov2_heads.data.Preprocess`, :class:`~dinov2_heads.features.FrozenBackbone`).

    Raises:
        TypeError: Not a sequence of numbers.
        ValueError: Not three values, a value that is not finite, or a std that is not positive.
    """
    checked = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            if isinstance(values, str | bytes):
                raise TypeError
            value = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            example = IMAGENET_MEAN if name == "mean" else IMAGENET_STD
            raise TypeError(
                f"{name} must be three numbers (R, G, B) such as {example}, got {values!r}"
            ) from None
        if len(value) != 3:
            raise ValueError(f"{name} needs one value per RGB channel, got {value}")
        if not all(math.isfinite(v) for v in value):
            raise ValueError(f"{name} values must be finite, got {value}")
        checked.append((value[0], value[1], value[2]))
    if any(s <= 0 for s in checked[1]):
        raise ValueError(f"std values must be positive, got {checked[1]}")
    return checked[0], checked[1]


def denormalize(
    image: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Undo :func:`normalize`: float images in [0, 1] (clipped), for display."""
    _check_image(image, "denormalize")
    x = image.float()
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


def nearest_valid_size(size: int | Sequence[int], patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """Round a requested (H, W) to the nearest multiple of the patch size, and log if it did.

    Each side goes to the nearest multiple (at least one patch); an exact tie goes to the even
    multiple, as Python's ``round`` does, which is also what the backbone's size error suggests.

    Args:
        size: The requested (H, W), or one int for a square.
        patch_size: 14 for every DINOv2 model.

    Returns:
        The valid (H, W).

    Example:
        ``nearest_valid_size((125, 250))`` returns ``(126, 252)`` and logs the change.
    """
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    height, width = _as_pair(size, "size")
    valid = (_nearest_multiple(height, patch_size), _nearest_multiple(width, patch_size))
    if valid != (height, width):
        logger.info(
            "image size %dx%d is not a multiple of %d; using %dx%d (H x W) instead",
            height,
            width,
            patch_size,
            valid[0],
            valid[1],
        )
    return valid


def _nearest_multiple(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def check_valid_size(size: tuple[int, int], patch_size: int = PATCH_SIZE) -> None:
    """Raise ``ValueError`` unless both sides of (H, W) are multiples of ``patch_size``."""
    height, width = size
    if height % patch_size or width % patch_size:
        suggestion = (_nearest_multiple(height, patch_size), _nearest_multiple(width, patch_size))
        raise ValueError(
            f"image size {height}x{width} is not a multiple of patch size {patch_size}; use "
            f"{suggestion[0]}x{suggestion[1]} (nearest_valid_size rounds a size for you)"
        )


def grid_size(size: tuple[int, int], patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """The patch grid (h, w) of a valid image size (H, W)."""
    check_valid_size(size, patch_size)
    return size[0] // patch_size, size[1] // patch_size


def check_normalize_option(who: str, normalize: object, image: Tensor | None = None) -> None:
    """The checks of a transform's ``normalize`` option, shared by every transform that has it.

    ``normalize`` must be a bool; with ``normalize=False`` an ``image`` given must be ``uint8``
    pixels, since float pixels would have to be rounded to whole grey levels.

    Args:
        who: The transform's class name, for the message.
        normalize: The option's value.
        image: The image the transform was given, or ``None`` to check the option only.

    Raises:
        TypeError: ``normalize`` is not a bool.
        ValueError: A float image with ``normalize=False``.
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if image is not None and not normalize and image.dtype != torch.uint8:
        raise ValueError(
            f"{who}(normalize=False) hands on uint8 pixels 0..255, but got a {image.dtype} "
            "image, which cannot be handed on as uint8 (float pixels would be rounded to "
            "whole grey levels); pass the decoded uint8 pixels (a Pillow image or a uint8 "
            "tensor), or keep normalize=True for float images"
        )
