"""Pillow, imported where it is used: the import that names the extra, the RGB conversion, and
decoding large JPEG files at reduced size.

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

#: The reductions libjpeg decodes at directly (each side divided by it), largest first.
JPEG_REDUCTIONS: tuple[int, ...] = (8, 4, 2)


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


def draft_scale(size: tuple[int, int], needed: tuple[int, int]) -> int:
    """The largest JPEG reduction (8, 4 or 2, else 1) that keeps at least ``needed`` pixels.

    Pillow's JPEG draft mode decodes at ``ceil(side / scale)``; this picks the scale as Pillow
    does, so that both sides stay at least as large as ``needed``.

    Args:
        size: The (width, height) stored in the file.
        needed: The smallest (width, height) the decoded image may have.

    Returns:
        The reduction: 1 (decode at full size), 2, 4 or 8.
    """
    width, height = size
    need_width, need_height = needed
    for scale in JPEG_REDUCTIONS:
        if width >= scale * need_width and height >= scale * need_height:
            return scale
    return 1


def draft_jpeg(image: Image.Image, needed: tuple[int, int]) -> int:
    """Let a JPEG file that Pillow has opened but not decoded decode at 1/2, 1/4 or 1/8 size.

    The decoder's own reduction (a scaled inverse DCT) is much cheaper than decoding every pixel
    and resizing afterwards; the image still holds at least ``needed`` pixels on each side, so
    the resize that follows still shrinks it. Anything else (other formats, a JPEG that is not
    at least twice as large as ``needed``, one already decoded) is left untouched.

    Args:
        image: An image from ``PIL.Image.open``, before ``load()``.
        needed: The smallest (width, height) the decoded image may have, in the file's own
            orientation (before any EXIF rotation).

    Returns:
        The reduction applied: 1 when the image decodes at full size.
    """
    scale = draft_scale(image.size, needed)
    if image.format != "JPEG" or scale == 1:
        return 1
    if image.draft(image.mode, needed) is None:
        return 1  # Pillow declined: a file with several tiles, or a second call
    # Pillow picks the scale by the same rule, and never below the size asked for.
    assert image.size[0] >= needed[0], (image.size, needed)
    assert image.size[1] >= needed[1], (image.size, needed)
    return scale
