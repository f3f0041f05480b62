"""``save_contact_sheet``: each query image next to its nearest stored images, as one picture."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, tensor_to_pil
from dinov2_heads.viz.caption import draw_label, save_picture, text_height
from dinov2_heads.viz.grid import _display_images, _image_format

logger = logging.getLogger(__name__)

__all__ = ["contact_sheet_caption", "save_contact_sheet"]

#: The frame around each query tile (RGB in [0, 1]).
QUERY_FRAME = (0.12, 0.47, 0.71)
#: The tile of a neighbour whose image is not available.
MISSING_GREY = 0.85
#: Pixels between a tile and the text under it (room for the query frame).
_TEXT_GAP = 3


def contact_sheet_caption(k: int, *, what: str = "features", missing: bool = False) -> str:
    """What a contact sheet of ``k`` neighbours per query shows (``missing``: grey tiles)."""
    text = (
        f"Image search: each row is a query image (left, framed) followed by its {k} most "
        f"similar stored images, most similar first. The number under each is the cosine "
        f"similarity of their {what} (1 = same direction, 0 = unrelated)."
    )
    return text + (" Grey: the stored image is not available." if missing else "")


def save_contact_sheet(
    path: str | os.PathLike[str],
    queries: Tensor,
    neighbors: Tensor | Sequence[Sequence[Tensor | None]],
    similarities: Tensor,
    *,
    labels: Sequence[Sequence[str]] | None = None,
    query_labels: Sequence[str] | None = None,
    normalized: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    padding: int = 4,
    caption: str | None = None,
) -> Path:
    """Write one row per query: the query, then its k neighbours with their similarities.

    Every tile takes the query images' size (H, W); a neighbour image of another size is
    resized to it. The similarity is written under each neighbour, with its label (an id or a
    file name) on a second line; a neighbour given as ``None`` (its image is not available) is
    a grey tile. The file is written atomically; Pillow draws it, matplotlib is not used.

    Args:
        path: The file to write (``.png`` by default; ``.jpg``, ``.webp``, ...).
        queries: (B, 3, H, W) query images: normalised floats, floats in [0, 1] or ``uint8``
            (see ``normalized``).
        neighbors: (B, k, 3, H, W), or B sequences of k images (3, H', W') or ``None``.
        similarities: (B, k) similarity of each neighbour to its query.
        labels: B sequences of k short texts shown under the similarities.
        query_labels: B short texts shown under the queries ("query" by default).
        normalized: Whether float images carry the ImageNet normalisation (undone with
            ``mean``/``std``).
        mean: The normalisation mean to undo.
        std: The normalisation standard deviation to undo.
        padding: White pixels between and around the tiles.
        caption: Text under the sheet (and a PNG's Description); by default
            :func:`contact_sheet_caption`; ``""`` for none.

    Returns:
        The path written.
    """
    target = Path(path)
    image_format = _image_format(target)
    shown = _display_images(queries.detach().cpu(), normalized, mean, std)
    batch, _, height, width = shown.shape
    if not isinstance(similarities, Tensor) or similarities.ndim != 2:
        got = tuple(similarities.shape) if isinstance(similarities, Tensor) else similarities
        raise ValueError(f"expected similarities of shape (B, k), got {got}")
    k = int(similarities.shape[1])
    if similarities.shape[0] != batch:
        raise ValueError(
            f"got {batch} query images but similarities for {similarities.shape[0]} queries; "
            "pass one row of similarities per query"
        )
    rows = _neighbor_rows(neighbors, batch, k)
    if labels is not None and (len(labels) != batch or any(len(row) != k for row in labels)):
        raise ValueError(f"labels must be {batch} sequences of {k} texts, one per neighbour")
    if query_labels is not None and len(query_labels) != batch:
        raise ValueError(f"got {len(query_labels)} query labels for {batch} queries")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")

    line = text_height()
    text_rows = 2 if labels is not None else 1
    row_height = height + _TEXT_GAP + text_rows * line + padding
    sheet = torch.ones(3, padding + batch * row_height, padding + (k + 1) * (width + padding))
    for b in range(batch):
        top = padding + b * row_height
        tiles = [shown[b]] + [
            _tile(image, height, width, normalized, mean, std) for image in rows[b]
        ]
        for column, tile in enumerate(tiles):
            left = padding + column * (width + padding)
            sheet[:, top : top + height, left : left + width] = tile
        _frame(sheet, top, padding, height, width)

    picture = tensor_to_pil(sheet)
    for b in range(batch):
        top = padding + b * row_height + height + _TEXT_GAP
        name = query_labels[b] if query_labels is not None else "query"
        draw_label(picture, name, (padding, top), width)
        for j in range(k):
            left = padding + (j + 1) * (width + padding)
            draw_label(picture, f"{float(similarities[b, j]):.3f}", (left, top), width)
            if labels is not None:
                draw_label(picture, labels[b][j], (left, top + line), width)
    missing = any(image is None for row in rows for image in row)
    text = contact_sheet_caption(k, missing=missing) if caption is None else caption
    save_picture(picture, target, image_format, text or None)
    logger.debug("wrote %s (%d queries with %d neighbours each)", target, batch, k)
    return target


def _neighbor_rows(
    neighbors: Tensor | Sequence[Sequence[Tensor | None]], batch: int, k: int
) -> list[list[Tensor | None]]:
    if isinstance(neighbors, Tensor):
        if neighbors.ndim != 5 or neighbors.shape[2] != 3:
            raise ValueError(
                f"expected neighbour images of shape (B, k, 3, H, W), got {tuple(neighbors.shape)}"
            )
        rows: list[list[Tensor | None]] = [list(row) for row in neighbors]
    else:
        rows = [list(row) for row in neighbors]
    if len(rows) != batch or any(len(row) != k for row in rows):
        counts = [len(row) for row in rows]
        raise ValueError(
            f"expected {batch} rows of {k} neighbour images (one per similarity), got rows of "
            f"{counts}"
        )
    for row in rows:
        for image in row:
            if image is not None and (not isinstance(image, Tensor) or image.ndim != 3):
                got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"expected each neighbour as a (3, H, W) image or None, got {got}")
    return rows


def _tile(
    image: Tensor | None,
    height: int,
    width: int,
    normalized: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """A (3, height, width) tile in [0, 1]; grey when the image is missing."""
    if image is None:
        return torch.full((3, height, width), MISSING_GREY)
    shown = _display_images(image.detach().cpu().unsqueeze(0), normalized, mean, std)
    if shown.shape[-2:] != (height, width):
        shown = F.interpolate(
            shown, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
    return shown[0].clamp(0, 1)


def _frame(sheet: Tensor, top: int, padding: int, height: int, width: int) -> None:
    """Draw the query frame in the padding around the first tile of a row (2 pixels wide)."""
    thick = min(2, padding)
    if thick == 0:
        return
    colour = torch.tensor(QUERY_FRAME).view(3, 1, 1)
    left = padding
    sheet[:, top - thick : top, left - thick : left + width + thick] = colour
    sheet[:, top + height : top + height + thick, left - thick : left + width + thick] = colour
    sheet[:, top : top + height, left - thick : left] = colour
    sheet[:, top : top + height, left + width : left + width + thick] = colour
