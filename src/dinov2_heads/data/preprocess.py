"""``Preprocess``: the evaluation transform (resize, centre crop, normalise) and named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor

from dinov2_heads.data.functional import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE,
    _as_pair,
    center_crop,
    check_mean_std,
    check_normalize_option,
    check_valid_size,
    nearest_valid_size,
    normalize,
    resize,
    resize_shorter_side,
    shorter_side_size,
)
from dinov2_heads.data.pillow import to_rgb

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """Image -> normalised float32 tensor of a fixed size that the backbone accepts.

    The steps are those of the official DINOv2 evaluation transform: resize (antialiased
    bicubic), centre crop, ImageNet mean/std normalisation. Decoded ``uint8`` pixels are resized
    as ``uint8`` on the CPU, so the result matches torchvision + Pillow to within one grey level.
    With ``normalize=False`` the last step is left to the
    :class:`~dinov2_heads.features.FrozenBackbone`, on its own device.

    Attributes:
        resize: An int resizes the shorter side to that length, keeping the aspect ratio (the
            official ``Resize(256)``); an (H, W) pair resizes to exactly that size, which may
            change the aspect ratio (the usual choice for fixed-size crops).
        crop: The centre crop (H, W) taken after resizing, or ``None`` for no crop.
        mean: Per-channel mean (RGB) subtracted after scaling to [0, 1].
        std: Per-channel standard deviation (RGB) divided by.
        patch_size: The output sides must be multiples of it (14 for DINOv2).
        draft: Let the loaders that read files (:func:`~dinov2_heads.data.load_image` with
            ``draft_for=``, the datasets, :func:`~dinov2_heads.data.load_batch`) decode a JPEG
            file at 1/2, 1/4 or 1/8 of its size when the resize needs no more pixels than
            that (Pillow's draft mode, see :meth:`decode_size`). Photos much larger than the
            output load several times faster; the result differs from full decoding by a few
            grey levels at most (docs/images.md has the figures). Images already decoded, other
            formats and JPEGs less than twice the resize's size are unaffected. Off by default;
            a feature store records it (see :meth:`description`).
        normalize: ``False`` stops before normalising and returns the resized ``uint8``
            pixels, for a :class:`~dinov2_heads.features.FrozenBackbone` (built with the same
            ``mean`` and ``std``) to convert and normalise on its device: a quarter of the
            bytes of float32 cross from the ``DataLoader`` workers to the main process, into
            pinned memory and onto the GPU, and the workers skip the float work. The features
            are the same (bit for bit on the CPU), so a feature store does not record where
            normalisation happened: a store started one way resumes the other way. Float
            input cannot be handed on as ``uint8`` and is refused with this off.

    Example:
        ``Preprocess(resize=(126, 252))(image)`` gives a (3, 126, 252) tensor; a
        ``Preprocess`` with a size that is not a multiple of 14 raises ``ValueError`` that
        names the nearest valid size (:meth:`for_size` rounds for you).
    """

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = PATCH_SIZE
    draft: bool = False
    normalize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.draft, bool):
            raise TypeError(f"draft must be True or False, got {self.draft!r}")
        check_normalize_option(type(self).__name__, self.normalize)
        if not isinstance(self.resize, int):
            object.__setattr__(self, "resize", _as_pair(self.resize, "resize"))
        elif self.resize <= 0:
            raise ValueError(f"resize must be positive, got {self.resize}")
        if self.crop is not None:
            object.__setattr__(self, "crop", _as_pair(self.crop, "crop"))
        elif isinstance(self.resize, int):
            raise ValueError(
                f"resize={self.resize} (shorter side) without a crop gives a size that depends "
                "on each image; add crop=(H, W) or pass resize=(H, W)"
            )
        mean, std = check_mean_std(self.mean, self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        check_valid_size(self.output_size, self.patch_size)

    @classmethod
    def for_size(cls, size: int | tuple[int, int], **kwargs: Any) -> Preprocess:
        """A plain resize to ``size`` (H, W), rounded to the nearest valid size (logged if so)."""
        patch_size = int(kwargs.get("patch_size", PATCH_SIZE))
        return cls(resize=nearest_valid_size(size, patch_size), **kwargs)

    @property
    def output_size(self) -> tuple[int, int]:
        """The (H, W) of every output."""
        if self.crop is not None:
            return self.crop
        assert not isinstance(self.resize, int)  # __post_init__ requires a crop then
        return self.resize

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (h, w) of the output."""
        height, width = self.output_size
        return height // self.patch_size, width // self.patch_size

    def replace(self, **changes: Any) -> Preprocess:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest (width, height) an image of this (upright) size may be decoded at.

        That is the size the resize produces, so a JPEG decoded at reduced size is still
        shrunk (or kept) by the antialiased resize, never enlarged.

        Returns:
            ``None`` when :attr:`draft` is off: decode at full size.
        """
        if not self.draft:
            return None
        if isinstance(self.resize, int):
            resized_height, resized_width = shorter_side_size(height, width, self.resize)
        else:
            resized_height, resized_width = self.resize
        return resized_width, resized_height

    def description(self) -> dict[str, Any]:
        """What a feature store records about this preprocessing: the class name and fields.

        ``draft`` appears only when on, so a ``Preprocess`` without it has the description it
        had before the option existed, and the stores made with it open and resume as before;
        a store made with draft decoding is refused by a run without it, and the reverse.
        ``normalize`` never appears: whether the images are normalised here or by the
        backbone on its device, the features are the same.
        """
        value: dict[str, Any] = {"type": type(self).__name__, **asdict(self)}
        del value["normalize"]
        if not self.draft:
            del value["draft"]
        return value

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        """Preprocess one image or a batch.

        Args:
            image: A Pillow image, or a tensor (3, H, W) / (B, 3, H, W) that is either
                ``uint8`` or float in [0, 1] (not yet normalised).

        Returns:
            (3, H, W) or (B, 3, H, W) float32, normalised; with ``normalize=False`` the
            resized and cropped ``uint8`` pixels (0..255) instead.

        Raises:
            ValueError: Float input with ``normalize=False``.
        """
        x = image if isinstance(image, Tensor) else _pixels(image)
        check_normalize_option(type(self).__name__, self.normalize, x)
        if isinstance(self.resize, int):
            x = resize_shorter_side(x, self.resize)
        else:
            x = resize(x, self.resize)
        if x.is_floating_point():
            # Bicubic overshoots; the uint8 path clips the same way.
            x = x.clamp(0, 1)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        if not self.normalize:
            return x.contiguous()
        return normalize(x, self.mean, self.std).contiguous()


def _pixels(image: Image.Image) -> Tensor:
    """The pixels of a Pillow image as a ``uint8`` (3, H, W) view, channels last in memory.

    The same values as :func:`~dinov2_heads.data.pil_to_tensor`, without its copy into
    channels-first order: the CPU resize reads interleaved RGB directly (about twice as fast
    for a photo) and gives the same pixels.
    """
    image = to_rgb(image)
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return rearrange(pixels, "(h w c) -> c h w", h=height, w=width, c=3)


#: Named presets: ``official_eval`` is the official DINOv2 evaluation transform (shorter side
#: 256, centre crop 224x224); ``vehicle_crop`` resizes a vehicle front/rear crop to 126x252
#: (H x W), a 9x18 patch grid.
PRESETS: dict[str, Preprocess] = {
    "official_eval": Preprocess(resize=256, crop=(224, 224)),
    "vehicle_crop": Preprocess(resize=(126, 252)),
}


def list_presets() -> list[str]:
    """The names of the preprocessing presets."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preprocess:
    """The preset called ``name`` (see :data:`PRESETS`).

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing preset {name!r}; choose one of {list_presets()} or build "
            "Preprocess(resize=(H, W)) yourself"
        ) from None
