"""Text on pictures: a caption under a sheet, short labels under tiles, and PNG metadata.

Pillow's own font is used (its scalable default where Pillow has FreeType, else the bitmap one),
so no font file is needed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["add_caption", "draw_label", "font", "save_picture", "text_height"]

#: Text height in pixels of captions and labels.
FONT_SIZE = 12
#: Dark grey, readable on white.
TEXT_COLOUR = (40, 40, 40)


def font(size: int = FONT_SIZE) -> Any:
    """Pillow's default font at ``size`` pixels (the fixed bitmap font without FreeType)."""
    from dinov2_heads.data.pillow import require_pillow

    require_pillow()
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def text_height(size: int = FONT_SIZE) -> int:
    """Pixels one line of text takes, spacing included."""
    _, top, _, bottom = font(size).getbbox("Ag")
    return int(bottom - top) + 3


def draw_label(picture: Image.Image, text: str, xy: tuple[int, int], width: int) -> None:
    """Write ``text`` at ``xy`` (top left), shortened with "..." to fit ``width`` pixels."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    face = font()
    shown = text
    for cut in range(len(text) - 1, -1, -1):
        if draw.textlength(shown, font=face) <= width:
            break
        shown = text[:cut] + "..." if cut else ""
    draw.text(xy, shown, fill=TEXT_COLOUR, font=face)


def add_caption(picture: Image.Image, caption: str, padding: int = 4) -> Image.Image:
    """``picture`` with ``caption`` below it on white, wrapped to the picture's width."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    face = font()
    margin = max(padding, 4)
    measure = ImageDraw.Draw(picture)
    width = max(picture.width - 2 * margin, 1)
    lines: list[str] = []
    for word in caption.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and measure.textlength(candidate, font=face) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    line_height = text_height()
    sheet = PILImage.new(
        "RGB", (picture.width, picture.height + len(lines) * line_height + margin), "white"
    )
    sheet.paste(picture, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for index, line in enumerate(lines):
        draw.text((margin, picture.height + index * line_height), line, fill=TEXT_COLOUR, font=face)
    return sheet


def save_picture(
    picture: Image.Image, target: Path, image_format: str, caption: str | None
) -> Path:
    """Write ``picture`` atomically, with ``caption`` under it and, in a PNG, as its Description."""
    options: dict[str, Any] = {}
    if caption:
        picture = add_caption(picture, caption)
        if image_format == "PNG":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text("Description", caption)
            options["pnginfo"] = info
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target
