"""Pillow, imported where it is used: the import that names the extra, and the RGB conversion.

The lowest module of the image code: :mod:`~dinov2_heads.data.functional` and
:mod:`~dinov2_heads.data.loading` both build on it, and it imports neither.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from PIL import Image

#: Pillow modes of 16-bit greyscale pixels.
_GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def require_pillow() -> ModuleType:
    """The ``PIL`` package with ``Image``, ``ImageOps`` and ``ImageDraw`` loaded.

    Raises:
        ImportError: Pillow is not installed; the message says how to install it.
    """
    try:
        import PIL
        import PIL.Image
        import PIL.ImageDraw
        import PIL.ImageOps
    except ImportError as error:
        raise ImportError(
            "reading and writing images needs Pillow, a dependency of dinov2-heads that is "
            "missing here: pip install Pillow"
        ) from error
    return PIL


def to_rgb(image: Image.Image, file_format: str | None = None) -> Image.Image:
    """``image`` in mode RGB; 16-bit greyscale keeps the high byte of each pixel.

    Pillow's own ``convert`` clips 16-bit values at 255, which turns a 16-bit greyscale picture
    white; Pillow itself keeps the high byte when it reads 16-bit RGB files, and so does this.
    ``file_format`` is the format the pixels were read from (default ``image.format``): PNG holds
    at most 16 bits, so an ``"I"`` image read from a PNG (Pillow before 12 opens 16-bit
    greyscale PNG files so) is 16-bit too. Other ``"I"`` (32-bit integer) images convert as
    Pillow does when their values lie in 0..255 (nothing is lost); otherwise, and for ``"F"``
    (32-bit float) images, there is no known range to map onto 0..255 and the image is refused:
    Pillow's conversion would clip it, typically to a black or white picture.

    Raises:
        ValueError: A floating-point image, or an integer one with values outside 0..255.
    """
    if file_format is None:
        file_format = image.format
    if image.mode in _GREY16_MODES or (image.mode == "I" and file_format == "PNG"):
        # In mode "I", point() truncates value / 256, which is value >> 8.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    elif image.mode == "F" or (image.mode == "I" and not _within_bytes(image)):
        kind = "floating-point" if image.mode == "F" else "integer"
        raise ValueError(
            f"32-bit {kind} pixels (Pillow mode {image.mode!r}) have no fixed range to map onto "
            "0..255; scale the image to 8-bit RGB first"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def _within_bytes(image: Image.Image) -> bool:
    # A one-band image: getextrema() is (low, high).
    low, high = cast(tuple[float, float], image.getextrema())
    return low >= 0 and high <= 255
