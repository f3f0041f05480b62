"""save_contact_sheet: one row per query, neighbours in order, missing images grey, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.data.functional import pil_to_tensor
from dinov2_heads.viz import contact_sheet_caption, save_contact_sheet

H, W, PAD = 28, 42, 4


def solid(value: float) -> torch.Tensor:
    return torch.full((3, H, W), value)


def read(path: Path) -> tuple[torch.Tensor, str]:
    from PIL import Image

    with Image.open(path) as picture:
        pixels = pil_to_tensor(picture.convert("RGB")).permute(1, 2, 0)  # (H, W, 3) uint8
        return pixels, picture.info.get("Description", "")


def test_rows_of_query_and_neighbours(tmp_path: Path) -> None:
    queries = torch.stack([solid(0.0), solid(1.0)])
    neighbors = [[solid(0.2), solid(0.4), None], [solid(0.6), solid(0.8), solid(0.9)]]
    similarities = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]])
    path = save_contact_sheet(
        tmp_path / "sheet.png", queries, neighbors, similarities, normalized=False
    )
    pixels, description = read(path)
    assert pixels.shape[1] == PAD + 4 * (W + PAD)
    assert description == contact_sheet_caption(3, missing=True)
    assert "3 most similar" in description
    assert "Grey: the stored image is not available" in description
    row_height = (pixels.shape[0] - PAD) // 2  # caption rows aside, both rows are equal
    assert row_height > H
    for column, expected in enumerate([0.0, 0.2, 0.4, 0.85]):  # the missing one is grey
        left = PAD + column * (W + PAD)
        value = round(expected * 255)
        assert pixels[PAD + 10, left + 10].tolist() == [value] * 3, column
    # The query is framed; the neighbours are not.
    assert pixels[PAD - 1, PAD + 10].tolist() != [255, 255, 255]
    assert pixels[PAD - 1, PAD + (W + PAD) + 10].tolist() == [255, 255, 255]


def test_neighbours_of_another_size_are_resized(tmp_path: Path) -> None:
    queries = solid(0.5).unsqueeze(0)
    neighbors = torch.full((1, 2, 3, 56, 84), 1.0)
    similarities = torch.tensor([[1.0, 0.5]])
    big = [[neighbors[0, 0], neighbors[0, 1]]]
    path = save_contact_sheet(tmp_path / "a.png", queries, big, similarities, normalized=False)
    pixels, _ = read(path)
    assert pixels.shape[1] == PAD + 3 * (W + PAD)
    assert pixels[PAD + 10, PAD + (W + PAD) + 10].tolist() == [255, 255, 255]
    # A (B, k, 3, H, W) tensor of neighbours works too.
    small = torch.full((1, 2, 3, H, W), 0.0)
    save_contact_sheet(tmp_path / "b.png", queries, small, similarities, normalized=False)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    queries = torch.stack([solid(0.1), solid(0.2)])
    sims = torch.rand(2, 2)
    row = [solid(0.3), solid(0.4)]
    with pytest.raises(ValueError, match=r"similarities of shape \(B, k\)"):
        save_contact_sheet(out, queries, [row, row], torch.rand(2))
    with pytest.raises(ValueError, match="2 query images but similarities for 3"):
        save_contact_sheet(out, queries, [row, row], torch.rand(3, 2))
    with pytest.raises(ValueError, match="2 rows of 2 neighbour images"):
        save_contact_sheet(out, queries, [row, row[:1]], sims)
    with pytest.raises(ValueError, match=r"\(3, H, W\) image or None"):
        save_contact_sheet(out, queries, [row, [solid(0.1), "car.jpg"]], sims)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"\(B, k, 3, H, W\)"):
        save_contact_sheet(out, queries, torch.rand(2, 2, 1, H, W), sims)
    with pytest.raises(ValueError, match="labels must be 2 sequences of 2 texts"):
        save_contact_sheet(out, queries, [row, row], sims, labels=[["a", "b"]])
    with pytest.raises(ValueError, match="1 query labels for 2 queries"):
        save_contact_sheet(out, queries, [row, row], sims, query_labels=["q"])
    with pytest.raises(ValueError, match=r"cannot write a picture as '\.txt'"):
        save_contact_sheet(tmp_path / "x.txt", queries, [row, row], sims)
    assert not out.exists()
