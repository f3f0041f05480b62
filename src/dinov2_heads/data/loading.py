"""Reading image files with Pillow: RGB, EXIF orientation, and explicit handling of bad files.

An image that cannot be read (missing, not an image, truncated, corrupt) is never dropped
silently: with ``on_error="raise"`` it raises :class:`UnreadableImageError` naming the path; with
``on_error="skip"`` it is left out, a warning naming the path is logged, and a
:class:`SkippedImage` record is returned so the caller can report or retry it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from dinov2_heads.data.pillow import draft_jpeg, require_pillow, to_rgb
from dinov2_heads.data.preprocess import get_preset
from dinov2_heads.errors import Dinov2HeadsError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: What to do with an image that cannot be read: raise, or skip it with a warning and a record.
OnError = Literal["raise", "skip"]

PathLike = str | os.PathLike[str]

#: What :class:`UnreadableImageError` advises by default: the fix for readers with ``on_error``.
SKIP_ADVICE = (
    "fix or remove the file, or pass on_error='skip' to leave unreadable images out with a warning"
)
#: What it advises where a pair (image and mask or depth map) is read by a dataset, which has
#: no option to skip one.
PAIR_ADVICE = (
    "fix or replace the file, or leave its pair out of the dataset (both files from the "
    "folders, or its entry from the lists or the manifest)"
)

__all__ = [
    "ImageBatch",
    "OnError",
    "SkippedImage",
    "UnreadableImageError",
    "check_images",
    "check_on_error",
    "load_batch",
    "load_image",
    "require_pillow",
]


class UnreadableImageError(Dinov2HeadsError, OSError):
    """An image file (a photo, or a mask) could not be opened or decoded.

    The message names the file and ends with what to do, which depends on where the error
    surfaces: the readers with ``on_error`` advise ``on_error='skip'`` (the default ``fix``);
    a dataset of pairs, which has no such option, advises leaving the pair out.

    Attributes:
        path: The file that failed.
        reason: What went wrong, as Pillow or the operating system said it.
        fix: The advice the message ends with.
        what: What the file is: ``"image"`` or ``"mask"``.
    """

    def __init__(
        self, path: PathLike, reason: str, fix: str = SKIP_ADVICE, what: str = "image"
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        self.what = what
        super().__init__(f"cannot read {what} {self.path}: {reason}; {fix}")

    def __reduce__(self) -> tuple[type[UnreadableImageError], tuple[Path, str, str, str]]:
        # Keeps the error picklable, so it crosses DataLoader worker processes intact.
        return (type(self), (self.path, self.reason, self.fix, self.what))


@dataclass(frozen=True)
class SkippedImage:
    """The record of an image left out under ``on_error="skip"``.

    Attributes:
        path: The file that was skipped.
        reason: Why it could not be read.
    """

    path: Path
    reason: str


def check_on_error(on_error: str) -> None:
    """Raise ``ValueError`` unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def load_image(path: PathLike, *, draft_for: object = None) -> Image.Image:
    """Open and fully decode an image as RGB, turned upright by its EXIF orientation tag.

    Grey, palette, RGBA and CMYK images are converted with Pillow's ``convert("RGB")`` (an alpha
    channel is dropped, as the official DINOv2 data pipeline does). 16-bit greyscale images keep
    the high byte of each pixel, as Pillow does for 16-bit RGB files (its ``convert("RGB")``
    would clip them at 255, a white picture). 32-bit float images, and 32-bit integer ones with
    values beyond 0..255, have no range to map onto 8 bits and are refused.

    Args:
        path: The image file.
        draft_for: The transform the image is loaded for. When it has a
            ``decode_size(width, height)`` method that returns a size (a
            :class:`~dinov2_heads.data.Preprocess` with ``draft=True``), a JPEG at least twice
            that size on each side is decoded at 1/2, 1/4 or 1/8 of its size, keeping at least
            that size (Pillow's draft mode). Anything else decodes at full size.

    Raises:
        UnreadableImageError: The file is missing, not an image, truncated or corrupt, or
            holds 32-bit pixels without a known range.
    """
    pil = require_pillow()
    decode_size = getattr(draft_for, "decode_size", None)
    try:
        with pil.Image.open(path) as opened:
            if callable(decode_size):
                _draft(opened, decode_size)
            # Decoding now, not lazily, is what surfaces a truncated file here, by its path.
            opened.load()
            upright = pil.ImageOps.exif_transpose(opened)
            image: Image.Image = to_rgb(upright, opened.format)
    except Exception as error:
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error
    return image


#: EXIF orientations (tag 274) that turn the picture by 90 degrees: width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 274


def _draft(opened: Image.Image, decode_size: Callable[[int, int], tuple[int, int] | None]) -> None:
    """Ask for JPEG draft decoding at the size ``decode_size`` needs for the upright image."""
    if opened.format != "JPEG":
        return  # reading the EXIF block of other formats costs time for nothing
    width, height = opened.size
    # The file stores the picture before its EXIF turn: a quarter turn swaps the sides.
    turned = opened.getexif().get(_ORIENTATION_TAG) in _QUARTER_TURNS
    needed = decode_size(height, width) if turned else decode_size(width, height)
    if needed is not None:
        need_width, need_height = needed
        draft_jpeg(opened, (need_height, need_width) if turned else (need_width, need_height))


class _SmallestDecode:
    """What :func:`check_images` decodes for: a JPEG at 1/8 of each side, anything else whole."""

    @staticmethod
    def decode_size(width: int, height: int) -> tuple[int, int]:
        return (1, 1)


def _check_image(path: PathLike) -> Image.Image:
    """``path`` decoded as cheaply as finding out whether :func:`load_image` can load it.

    A JPEG is decoded at 1/8 of each side (Pillow's draft mode): libjpeg still decodes every
    coefficient of the entropy-coded data at that scale (only the inverse DCT is reduced), so
    a truncated or damaged file fails exactly as at full size (the tests check this on cut,
    flipped and overwritten bytes, baseline and progressive). Other formats have no reduced
    decoding and are decoded whole. The EXIF turn and the RGB conversion run as in
    :func:`load_image`.

    Raises:
        UnreadableImageError: As :func:`load_image`.
    """
    return load_image(path, draft_for=_SmallestDecode)


def _skip(path: PathLike, error: UnreadableImageError) -> SkippedImage:
    logger.warning("skipping unreadable image %s: %s", path, error.reason)
    return SkippedImage(Path(path), error.reason)


def check_images(
    paths: Iterable[PathLike], *, on_error: OnError = "raise"
) -> tuple[list[Path], list[SkippedImage]]:
    """Decode every image once and sort them into readable ones and skipped ones.

    JPEG files are decoded at 1/8 of each side (Pillow's draft mode): the same files fail as at
    full size, several times faster for camera photos.

    Args:
        paths: Image files.
        on_error: ``"raise"`` stops at the first unreadable file; ``"skip"`` logs a warning for
            each one and returns it in the skipped list.

    Returns:
        The readable paths (input order) and the records of the skipped ones.
    """
    check_on_error(on_error)
    good: list[Path] = []
    skipped: list[SkippedImage] = []
    for path in paths:
        try:
            _check_image(path)
        except UnreadableImageError as error:
            if on_error == "raise":
                raise
            skipped.append(_skip(path, error))
        else:
            good.append(Path(path))
    if skipped:
        total = len(good) + len(skipped)
        logger.warning("skipped %d unreadable image(s) of %d", len(skipped), total)
    return good, skipped


@dataclass(frozen=True, eq=False)
class ImageBatch:
    """Images loaded and preprocessed into one batch.

    Attributes:
        images: (B, 3, H, W) float32, ready for the backbone.
        paths: The B files in the batch, in order.
        skipped: The files left out under ``on_error="skip"``.
    """

    images: Tensor
    paths: tuple[Path, ...]
    skipped: tuple[SkippedImage, ...]


def load_batch(
    paths: Iterable[PathLike],
    transform: Callable[[Image.Image], Tensor] | None = None,
    *,
    on_error: OnError = "raise",
) -> ImageBatch:
    """Load, preprocess and stack image files into one (B, 3, H, W) batch.

    Args:
        paths: Image files.
        transform: PIL image -> (3, H, W); default the ``"official_eval"`` preset
            (resize 256, centre crop 224, ImageNet normalisation). A ``Preprocess`` with
            ``draft=True`` decodes large JPEG files at reduced size (see :func:`load_image`).
        on_error: ``"raise"`` or ``"skip"`` (see :func:`check_images`).

    Returns:
        The batch, the paths it holds, and any skipped files.

    Raises:
        ValueError: No image could be read, or the transform gave different sizes.
    """
    check_on_error(on_error)
    transform = transform if transform is not None else get_preset("official_eval")
    tensors: list[Tensor] = []
    kept: list[Path] = []
    skipped: list[SkippedImage] = []
    for path in paths:
        try:
            image = load_image(path, draft_for=transform)
        except UnreadableImageError as error:
            if on_error == "raise":
                raise
            skipped.append(_skip(path, error))
            continue
        tensors.append(transform(image))
        kept.append(Path(path))
    if not tensors and not skipped:
        raise ValueError(
            "load_batch got no image paths; pass a non-empty list of image files (a folder's "
            "images: sorted(Path(folder).glob('*.png')))"
        )
    if not tensors:
        raise ValueError(
            f"no image could be read ({len(skipped)} skipped); check the paths and the log"
        )
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"the transform produced images of different shapes {sorted(shapes)}; use a "
            "transform with a fixed output size, such as a preset"
        )
    return ImageBatch(torch.stack(tensors), tuple(kept), tuple(skipped))
