"""Light train-time augmentations in plain torch, each drawing from an optional seeded generator.

Every augmentation is a callable ``aug(image, generator=None)`` on a (3, H, W) image, ``uint8``
or float in [0, 1], before normalisation. Passing a ``torch.Generator`` makes the draws
reproducible; without one they come from torch's global generator (which ``DataLoader`` seeds
differently in each worker process). :class:`TrainTransform` chains them with normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from dinov2_heads.data.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE,
    _as_pair,
    check_valid_size,
    normalize,
    pil_to_tensor,
    resize,
    to_float,
)

if TYPE_CHECKING:
    from PIL import Image


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An int in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _check_single(image: Tensor, who: str) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{who} expects one image of shape (3, H, W), got {tuple(image.shape)}")


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``.

    Do not use it when left and right are labels (a vehicle's orientation, say): flip the label
    as well, or leave this out.
    """

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(3, H, W) -> (3, H, W)."""
        _check_single(image, "RandomHorizontalFlip")
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1)
        return image


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random region of random area and aspect ratio, then resize it to ``size``.

    The region is drawn as torchvision's ``RandomResizedCrop`` draws it (ten tries, then a
    central fallback), except that ``ratio`` is relative to the output's aspect ratio, so a
    126x252 output gets crops around 2:1 instead of being stretched from squares.

    Attributes:
        size: The output (H, W).
        scale: Range of the crop's area as a fraction of the image's area.
        ratio: Range of the crop's width/height relative to the output's width/height.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _as_pair(self.size, "size"))
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")

    def region(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """Draw a crop region (top, left, crop_height, crop_width) of a height x width image."""
        area = height * width
        target_aspect = self.size[1] / self.size[0]
        log_low = math.log(self.ratio[0] * target_aspect)
        log_high = math.log(self.ratio[1] * target_aspect)
        for _ in range(10):
            crop_area = area * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(log_low, log_high, generator))
            crop_w = round(math.sqrt(crop_area * aspect))
            crop_h = round(math.sqrt(crop_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = _randint(0, height - crop_h, generator)
                left = _randint(0, width - crop_w, generator)
                return top, left, crop_h, crop_w
        # Fallback: the largest central crop with the aspect ratio clamped into range.
        aspect = min(max(width / height, math.exp(log_low)), math.exp(log_high))
        if width / height > aspect:
            crop_h, crop_w = height, min(width, round(height * aspect))
        else:
            crop_h, crop_w = min(height, round(width / aspect)), width
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(3, H, W) -> (3, size[0], size[1]), same dtype."""
        _check_single(image, "RandomResizedCrop")
        top, left, crop_h, crop_w = self.region(int(image.shape[1]), int(image.shape[2]), generator)
        out = resize(image[:, top : top + crop_h, left : left + crop_w], self.size)
        return out.clamp(0, 1) if out.is_floating_point() else out


# RGB -> YIQ: Y is luma, I and Q the two chroma axes; a hue shift is a rotation in the I-Q plane.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def _grey(image: Tensor) -> Tensor:
    """(3, H, W) -> (1, H, W) luma (ITU-R 601 weights, as torchvision uses)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
    return torch.einsum("chw,c->hw", image, weights).unsqueeze(0)


@dataclass(frozen=True)
class ColorJitter:
    """Random brightness, contrast, saturation and hue changes, applied in that order.

    Each strength s draws a factor uniformly from [1 - s, 1 + s] (hue: a shift in [-s, s] of a
    full turn, s <= 0.5); 0 turns a change off. Brightness scales the pixels, contrast blends
    with the image's mean grey, saturation blends with the grey image, and hue rotates the
    chroma plane of YIQ space (a close, cheap stand-in for an HSV hue shift). Values are
    clipped to [0, 1] after each step.

    Returns float images in [0, 1] whatever the input dtype.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(3, H, W) -> (3, H, W) float32 in [0, 1]."""
        _check_single(image, "ColorJitter")
        x = to_float(image)
        if self.brightness > 0:
            factor = _uniform(1 - self.brightness, 1 + self.brightness, generator)
            x = (x * factor).clamp(0, 1)
        if self.contrast > 0:
            factor = _uniform(1 - self.contrast, 1 + self.contrast, generator)
            mean = _grey(x).mean()
            x = (mean + factor * (x - mean)).clamp(0, 1)
        if self.saturation > 0:
            factor = _uniform(1 - self.saturation, 1 + self.saturation, generator)
            grey = _grey(x)
            x = (grey + factor * (x - grey)).clamp(0, 1)
        if self.hue > 0:
            x = _rotate_hue(x, _uniform(-self.hue, self.hue, generator))
        return x


def _rotate_hue(image: Tensor, turns: float) -> Tensor:
    to_yiq = _RGB_TO_YIQ.to(dtype=image.dtype, device=image.device)
    angle = 2 * math.pi * turns
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]], dtype=image.dtype, device=image.device
    )
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("dc,chw->dhw", matrix, image).clamp(0, 1)


class WorkerSeeded:
    """A transform with its own seeded generator, re-seeded once in each DataLoader worker.

    The class that uses it declares ``generator``, ``_last_seed`` and ``_seeded_in``.
    """

    generator: torch.Generator | None
    _last_seed: int | None
    _seeded_in: int | None

    def reseed(self, seed: int) -> None:
        """Restart the transform's generator from ``seed``."""
        self.generator = torch.Generator().manual_seed(int(seed))
        self._last_seed = int(seed)
        self._seeded_in = _worker_seed()

    def _stream(self) -> torch.Generator | None:
        """The generator to draw from, made afresh once in each DataLoader worker process."""
        worker = _worker_seed()
        if self._last_seed is not None and worker is not None and worker != self._seeded_in:
            # Every worker of every epoch starts from the same copy of the main process's
            # generator; drawing from it as it is would repeat the same augmentations.
            mixed = (self._last_seed * 1_000_003 + worker) % 2**64
            self.generator = torch.Generator().manual_seed(mixed)
            self._seeded_in = worker
        return self.generator


@dataclass
class TrainTransform(WorkerSeeded):
    """Image -> augmented, normalised (3, H, W) float32: random resized crop, flip, colour jitter.

    Attributes:
        size: The output (H, W), a multiple of 14 on both sides.
        scale: Area range of the random crop (see :class:`RandomResizedCrop`).
        ratio: Aspect range of the random crop, relative to the output's aspect ratio.
        flip: Probability of a horizontal flip; 0 turns it off (do so when orientation is a
            label).
        brightness: Colour jitter strengths (see :class:`ColorJitter`); all 0 turns it off.
        contrast: See ``brightness``.
        saturation: See ``brightness``.
        hue: See ``brightness``.
        mean: Normalisation mean (RGB).
        std: Normalisation standard deviation (RGB).
        seed: Seeds the transform's own generator, so a run is repeatable; ``None`` draws from
            torch's global generator instead. In a ``DataLoader`` worker process the stream
            is drawn afresh from the seed and the seed torch gives that worker
            (``get_worker_info().seed``), which differs per worker and per epoch and follows
            ``torch.manual_seed`` in the main process; a :meth:`reseed` in the worker (in a
            ``worker_init_fn``) is kept instead.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int | None = None
    generator: torch.Generator | None = field(init=False, repr=False, default=None)
    # The seed of the last reseed, and the DataLoader worker it ran in (None: the main process).
    _last_seed: int | None = field(init=False, repr=False, default=None)
    _seeded_in: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.size = _as_pair(self.size, "size")
        check_valid_size(self.size, PATCH_SIZE)
        self._crop = RandomResizedCrop(self.size, self.scale, self.ratio)
        self._flip = RandomHorizontalFlip(self.flip)
        self._jitter = ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)
        if self.seed is not None:
            self.reseed(self.seed)

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        """A Pillow image or a (3, H, W) tensor (``uint8`` or float in [0, 1]) -> (3, H, W)."""
        generator = self._stream()
        x = image if isinstance(image, Tensor) else pil_to_tensor(image)
        x = self._crop(x, generator)
        x = self._flip(x, generator)
        if self.brightness or self.contrast or self.saturation or self.hue:
            x = self._jitter(x, generator)
        return normalize(x, self.mean, self.std)


def _worker_seed() -> int | None:
    """The seed torch gave this DataLoader worker process, or None outside workers."""
    info = get_worker_info()
    return None if info is None else int(info.seed)
