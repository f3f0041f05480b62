"""Transforms that move an image and its segmentation mask together."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.data.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_mean_std,
    check_normalize_option,
    normalize,
    pil_to_tensor,
    to_float,
)
from dinov2_heads.data.masks import IGNORE_LABEL

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class SegmentationTransform:
    """(image, mask) -> (normalised image (3, H, W) float32, mask (H, W) int64), moved together.

    In order: a random rescale of both (bilinear for the image, nearest for the mask), a
    random crop of ``crop_size`` (sides shorter than the crop are padded: image with 0 after
    normalisation, mask with 255, as mmsegmentation's ``Pad``), and a horizontal flip with
    probability ``flip``. With the defaults (no scale, no crop, no flip) only the image is
    normalised: the evaluation transform.

    With ``normalize=False`` the image stays ``uint8`` pixels (3, H, W) 0..255, for a
    :class:`~dinov2_heads.features.FrozenBackbone` (or a :class:`~dinov2_heads.dense.Segmenter`)
    built with the same ``mean`` and ``std`` to normalise on its device: a quarter of the bytes
    cross from the ``DataLoader`` workers to the GPU. Without a rescale and without padding
    (the evaluation transform, and every crop that fits inside the image) the pixels are the
    image's own and the features equal those of ``normalize=True`` (bit for bit on the CPU).
    The random rescale is computed in float as before and rounded to whole grey levels (within
    half a level of the float image), and padding uses the mean colour rounded to whole grey
    levels (:attr:`pad_pixel`), since 0 after normalisation is no ``uint8`` value.

    Attributes:
        crop_size: Output (H, W) of the random crop, or ``None`` to keep the size.
        scale_range: Rescale factor drawn uniformly from (low, high), or ``None``.
        flip: Probability of a horizontal flip.
        mean: Normalisation mean (RGB).
        std: Normalisation standard deviation (RGB).
        seed: Seeds the transform's own generator (repeatable runs); ``None`` draws from
            torch's global generator, which DataLoader workers seed apart.
        normalize: ``False`` returns ``uint8`` pixels instead of normalised float32 (see
            above); the random draws are the same either way. Float images are refused then.
    """

    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] | None = None
    flip: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int | None = None
    normalize: bool = True
    generator: torch.Generator | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        check_normalize_option(type(self).__name__, self.normalize)
        self.mean, self.std = check_mean_std(self.mean, self.std)
        if self.crop_size is not None:
            crop = (
                (self.crop_size, self.crop_size)
                if isinstance(self.crop_size, int)
                else tuple(self.crop_size)
            )
            if len(crop) != 2 or not all(isinstance(v, int) and v > 0 for v in crop):
                raise ValueError(f"crop_size must be (height, width) > 0, got {self.crop_size!r}")
            self.crop_size = (int(crop[0]), int(crop[1]))
        if self.scale_range is not None:
            low, high = (float(v) for v in self.scale_range)
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise ValueError(
                    "scale_range must be (low, high) with 0 < low <= high, got "
                    f"{self.scale_range!r}"
                )
            self.scale_range = (low, high)
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip!r}")
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(int(self.seed))

    def description(self) -> dict[str, Any]:
        """What a feature store records about this transform (see
        :func:`pair_transform_description`: ``normalize`` is left out)."""
        return pair_transform_description(self)

    def __call__(self, image: Image.Image | Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Transform an image (PIL, or (3, H, W) uint8 / float in [0, 1]) and its mask (H, W).

        Returns:
            The image (3, H, W), normalised float32 (``uint8`` with ``normalize=False``), and
            the mask (H, W) int64.

        Raises:
            ValueError: The mask is not (H, W), or its size differs from the image's; a float
                image with ``normalize=False``.
        """
        pixels = image if isinstance(image, Tensor) else pil_to_tensor(image)
        check_normalize_option(type(self).__name__, self.normalize, pixels)
        x = to_float(pixels) if self.normalize else pixels
        check_pair(x, mask)
        target = mask.long()
        if self.scale_range is not None:
            factor = self._uniform(*self.scale_range)
            height, width = x.shape[-2:]
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            x = _rescale(x, size, antialias=factor < 1)
            target = F.interpolate(target[None, None].float(), size=size, mode="nearest-exact")
            target = target[0, 0].long()
        if self.normalize:
            x = normalize(x, self.mean, self.std)
        if self.crop_size is not None:
            x, target = self._crop(x, target, self.crop_size)
        if self.flip and self._uniform(0.0, 1.0) < self.flip:
            x, target = x.flip(-1), target.flip(-1)
        return x, target

    @property
    def pad_pixel(self) -> tuple[int, int, int]:
        """The ``uint8`` colour a crop pads with under ``normalize=False``: the mean, rounded."""
        red, green, blue = (min(255, max(0, round(255 * m))) for m in self.mean)
        return red, green, blue

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _crop(self, x: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        crop_h, crop_w = size
        height, width = x.shape[-2:]
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            if x.dtype == torch.uint8:
                # 0 after normalisation is the mean colour; pixels get it rounded.
                colour = torch.tensor(self.pad_pixel, dtype=torch.uint8, device=x.device)
                x[:, height:, :] = colour[:, None, None]
                x[:, :, width:] = colour[:, None, None]
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_LABEL)
            height, width = x.shape[-2:]
        top = int(torch.randint(0, height - crop_h + 1, (), generator=self.generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=self.generator))
        return (
            x[:, top : top + crop_h, left : left + crop_w],
            mask[top : top + crop_h, left : left + crop_w],
        )


def _rescale(x: Tensor, size: tuple[int, int], *, antialias: bool) -> Tensor:
    """Bilinear resize of one image (3, H, W) to ``size``; ``uint8`` is rounded back to pixels.

    ``uint8`` pixels are resized as floats 0..255 (the same interpolation as the float image
    in [0, 1], scaled) and rounded to the nearest grey level.
    """
    batch = x[None].float() if x.dtype == torch.uint8 else x[None]
    out = F.interpolate(
        batch, size=size, mode="bilinear", align_corners=False, antialias=antialias
    )[0]
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def check_pair(image: Tensor, mask: Tensor, where: str = "") -> None:
    """``ValueError`` unless ``mask`` is (H, W) with the H, W of ``image`` (3, H, W)."""
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{where}expected a mask of shape (H, W), got {shape}")
    if mask.is_floating_point():
        raise TypeError(f"{where}a mask holds integer class indices, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        (mh, mw), (ih, iw) = mask.shape, image.shape[-2:]
        raise ValueError(
            f"{where}the mask is {mh}x{mw} (HxW) but its image is {ih}x{iw}; a mask must "
            "match its image pixel for pixel (check that they belong together and that the "
            "image was not rotated by an EXIF tag or resized)"
        )


def pair_transform_description(transform: Any) -> dict[str, Any]:
    """A dataclass pair transform as a store records it: its class name and fields.

    ``normalize`` is left out: whether the images are normalised here or by the backbone on
    its device, the features are the same, so stores made before the option existed resume
    as before, and a store started one way resumes the other way. A field set after
    construction, such as the random generator's state, is recorded as ``None``: it is no
    setting (``seed`` is).
    """
    value: dict[str, Any] = {"type": type(transform).__name__}
    for item in fields(transform):
        if item.name != "normalize":
            value[item.name] = getattr(transform, item.name) if item.init else None
    return value
