"""Transforms that move an image and its depth map together: crop, flip, colour, normalise.

Depth is never interpolated here (a bilinear mix of a valid and a missing pixel is a wrong
depth), so the random transforms are crops and flips; :func:`resize_pair` resizes the depth
by nearest neighbour when a pair must change size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.data.augment import ColorJitter, WorkerSeeded, _randint, _uniform
from dinov2_heads.data.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _as_pair,
    check_mean_std,
    check_normalize_option,
    normalize,
    resize,
)
from dinov2_heads.data.joint_transforms import pair_transform_description


def check_pair(image: Tensor, depth: Tensor, who: str = "the depth transform") -> None:
    """A ``ValueError`` unless ``image`` is (3, H, W) and ``depth`` (1, H, W) of the same H, W."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{who} expects an image of shape (3, H, W), got {tuple(image.shape)}")
    if depth.ndim != 3 or depth.shape[0] != 1:
        raise ValueError(f"{who} expects a depth map of shape (1, H, W), got {tuple(depth.shape)}")
    if image.shape[-2:] != depth.shape[-2:]:
        (ih, iw), (dh, dw) = image.shape[-2:], depth.shape[-2:]
        raise ValueError(
            f"{who}: the depth map is {dh}x{dw} but its image is {ih}x{iw} (H x W); depth maps "
            "must have their image's size (resize both with resize_pair)"
        )


def resize_pair(image: Tensor, depth: Tensor, size: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize an image (bicubic, antialiased) and its depth map (nearest) to ``size`` (H, W)."""
    check_pair(image, depth, "resize_pair")
    height, width = _as_pair(size, "size")
    resized = F.interpolate(depth[None].float(), size=(height, width), mode="nearest-exact")[0]
    return resize(image, (height, width)), resized


@dataclass
class DepthTransform(WorkerSeeded):
    """(image, depth) -> (normalised image (3, H, W) float32, depth (1, H, W) float32).

    The image is ``uint8`` or float in [0, 1]; the depth is in metres. In order: a random crop
    of ``crop_size`` (the same window for both), a horizontal flip of both with probability
    ``flip``, colour jitter on the image only, and the normalisation of the image.

    With ``normalize=False`` the image stays ``uint8`` pixels (3, H, W) 0..255, for a
    :class:`~dinov2_heads.features.FrozenBackbone` (or a :class:`~dinov2_heads.dense.Depther`)
    built with the same ``mean`` and ``std`` to normalise on its device: a quarter of the bytes
    cross from the ``DataLoader`` workers to the GPU. Crops and flips move pixels as they are,
    so without colour jitter (:meth:`evaluation`) the features equal those of
    ``normalize=True`` (bit for bit on the CPU); jittered colours are rounded to whole grey
    levels (within half a level of the float image).

    Attributes:
        crop_size: (H, W) of the random crop, ``None`` to keep the whole pair. Pairs smaller
            than the crop are refused. Any size works with a :class:`~dinov2_heads.dense.Depther`
            (it pads to multiples of 14); a training crop whose sides are multiples of 14
            avoids the padding.
        flip: Probability of flipping both left-right.
        brightness: Colour jitter strengths (see :class:`~dinov2_heads.data.ColorJitter`).
        contrast: See ``brightness``.
        saturation: See ``brightness``.
        hue: See ``brightness``.
        mean: Normalisation mean (RGB).
        std: Normalisation standard deviation (RGB).
        seed: Seeds the transform's own generator (per DataLoader worker, as
            :class:`~dinov2_heads.data.TrainTransform` does); ``None`` draws from torch's
            global generator.
        normalize: ``False`` returns ``uint8`` pixels instead of normalised float32 (see
            above); the random draws are the same either way. Float images are refused then.
    """

    crop_size: tuple[int, int] | None = None
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int | None = None
    normalize: bool = True
    generator: torch.Generator | None = field(init=False, repr=False, default=None)
    _last_seed: int | None = field(init=False, repr=False, default=None)
    _seeded_in: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        check_normalize_option(type(self).__name__, self.normalize)
        self.mean, self.std = check_mean_std(self.mean, self.std)
        if self.crop_size is not None:
            self.crop_size = _as_pair(self.crop_size, "crop_size")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip}")
        self._jitter = ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)
        if self.seed is not None:
            self.reseed(self.seed)

    @classmethod
    def evaluation(
        cls,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        *,
        normalize: bool = True,
    ) -> DepthTransform:
        """No crop, flip or jitter: the image normalised (or, with ``normalize=False``, its
        ``uint8`` pixels as they are), the depth as it is."""
        return cls(
            flip=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            mean=mean,
            std=std,
            normalize=normalize,
        )

    def description(self) -> dict[str, Any]:
        """What a feature store records about this transform (see
        :func:`pair_transform_description`: ``normalize`` is left out)."""
        return pair_transform_description(self)

    def __call__(self, image: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """Transform one pair: image (3, H, W), depth (1, H, W) -> the same, cropped to size.

        Returns:
            The image, normalised float32 (``uint8`` with ``normalize=False``), and the depth
            float32.

        Raises:
            ValueError: Shapes that do not pair, a crop larger than the pair, or a float
                image with ``normalize=False``.
        """
        check_pair(image, depth)
        check_normalize_option(type(self).__name__, self.normalize, image)
        generator = self._stream()
        depth = depth.float()
        if self.crop_size is not None:
            crop_h, crop_w = self.crop_size
            height, width = image.shape[-2:]
            if crop_h > height or crop_w > width:
                raise ValueError(
                    f"crop_size {crop_h}x{crop_w} is larger than the {height}x{width} pair; "
                    "use a smaller crop or resize the pair first with resize_pair"
                )
            top = _randint(0, height - crop_h, generator)
            left = _randint(0, width - crop_w, generator)
            image = image[:, top : top + crop_h, left : left + crop_w]
            depth = depth[:, top : top + crop_h, left : left + crop_w]
        if self.flip > 0 and _uniform(0.0, 1.0, generator) < self.flip:
            image, depth = image.flip(-1), depth.flip(-1)
        if self.brightness or self.contrast or self.saturation or self.hue:
            image = self._jitter(image, generator)
            if not self.normalize:
                # Floats in [0, 1] from the jitter, back to the nearest grey level.
                image = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        if not self.normalize:
            return image.contiguous(), depth.contiguous()
        return normalize(image, self.mean, self.std), depth.contiguous()
