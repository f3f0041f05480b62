from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dinov2_heads.data import normalize, pil_to_tensor
from dinov2_heads.viz import pca_caption, save_pca_grid


def example(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, 28, 42), generator=generator, dtype=torch.uint8)
    pictures = torch.rand(batch, 2, 3, 3, generator=generator)
    pictures[:, 0, 0] = 0  # a background patch
    return pixels, normalize(pixels), pictures


def test_layout_and_pixels(tmp_path: Path) -> None:
    pixels, images, pictures = example()
    path = save_pca_grid(tmp_path / "out" / "pca.png", images, pictures, padding=2, caption="")
    assert path == tmp_path / "out" / "pca.png"
    sheet = Image.open(path)
    assert sheet.mode == "RGB"
    # One pair per row: 2 + 42 + 2 + 42 + 2 wide, 2 + 3 * (28 + 2) high.
    assert sheet.size == (90, 92)
    grid = pil_to_tensor(sheet)
    for b in range(3):
        top = 2 + b * 30
        original = grid[:, top : top + 28, 2:44]
        assert (original.int() - pixels[b].int()).abs().max() <= 1
        feature = grid[:, top : top + 28, 46:88]
        # Nearest upscaling: each patch of the 2x3 picture is a 14x14 block.
        block = feature[:, 14:28, 28:42]
        expected = (pictures[b, 1, 2] * 255).round().to(torch.uint8)
        assert torch.equal(block, expected.view(3, 1, 1).expand(3, 14, 14))
        assert torch.all(feature[:, :14, :14] == 0)
    assert torch.all(grid[:, 0, :] == 255)  # white padding
    assert [p.name for p in path.parent.iterdir()] == ["pca.png"]


def test_columns_uint8_and_lists(tmp_path: Path) -> None:
    pixels, _, pictures = example(3)
    path = save_pca_grid(
        tmp_path / "grid.png",
        pixels,
        list(pictures),
        columns=2,
        padding=0,
        upscale="bilinear",
        caption="",
    )
    sheet = Image.open(path)
    assert sheet.size == (2 * 2 * 42, 2 * 28)
    grid = pil_to_tensor(sheet)
    assert torch.equal(grid[:, 28:, :42], pixels[2])
    assert torch.all(grid[:, 28:, 84:] == 255)  # the empty slot stays white


def test_overwrites_atomically(tmp_path: Path) -> None:
    pixels, images, pictures = example(1)
    path = tmp_path / "pca.png"
    path.write_bytes(b"old")
    save_pca_grid(path, images, pictures, caption="")
    assert Image.open(path).size[1] == 28 + 8
    unnormalised = save_pca_grid(path, pixels.float() / 255, pictures, normalized=False, caption="")
    assert torch.equal(pil_to_tensor(Image.open(unnormalised))[:, 4:32, 4:46], pixels[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pca.png"]


def test_errors(tmp_path: Path) -> None:
    _, images, pictures = example(3)
    with pytest.raises(ValueError, match="3 images but 2 PCA pictures"):
        save_pca_grid(tmp_path / "x.png", images, pictures[:2])
    with pytest.raises(ValueError, match=r"\(B, h, w, 3\)"):
        save_pca_grid(tmp_path / "x.png", images, pictures[..., :2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        save_pca_grid(tmp_path / "x.png", images[:, :2], pictures)
    with pytest.raises(ValueError, match="columns"):
        save_pca_grid(tmp_path / "x.png", images, pictures, columns=0)
    assert not list(tmp_path.iterdir())


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    _, images, pictures = example(1)
    with pytest.raises(ValueError, match="no PCA pictures to draw"):
        save_pca_grid(tmp_path / "x.png", images, [])
    with pytest.raises(ValueError, match="no PCA pictures to draw"):
        save_pca_grid(tmp_path / "x.png", images[:0], pictures[:0])
    assert not list(tmp_path.iterdir())


def test_the_suffix_picks_the_format(tmp_path: Path) -> None:
    _, images, pictures = example(1)
    for name, expected in [("pca.jpg", "JPEG"), ("pca.webp", "WEBP"), ("pca", "PNG")]:
        path = save_pca_grid(tmp_path / name, images, pictures)
        assert Image.open(path).format == expected, name
    with pytest.raises(ValueError, match=r"'\.txt'.*use \.png"):
        save_pca_grid(tmp_path / "pca.txt", images, pictures)
    with pytest.raises(IsADirectoryError, match=r"pca\.png"):
        save_pca_grid(tmp_path, images, pictures)
    assert not (tmp_path / "pca.txt").exists()


def test_the_caption_says_what_the_colours_mean(tmp_path: Path) -> None:
    _, images, pictures = example(2)
    bare = Image.open(save_pca_grid(tmp_path / "bare.png", images, pictures, caption=""))
    path = save_pca_grid(tmp_path / "pca.png", images, pictures)
    with Image.open(path) as picture:
        assert picture.width == bare.width
        assert picture.height > bare.height
        # The grid is unchanged above the caption; the caption is dark text on white.
        grid = pil_to_tensor(picture)
        assert torch.equal(grid[:, : bare.height], pil_to_tensor(bare))
        below = grid[:, bare.height :]
        assert int((below < 128).any(dim=0).sum()) > 50
        assert picture.info["Description"] == pca_caption()
    caption = pca_caption()
    assert "red, green and blue" in caption
    assert "Black: background" in caption
    assert "random weights" not in caption


def test_random_weights_and_no_background_captions(tmp_path: Path) -> None:
    random = pca_caption(random_weights=True)
    assert "random weights, so the colours follow the pixels' colours" in random
    assert "Black" not in pca_caption(background=False)
    _, images, pictures = example(1)
    short = save_pca_grid(tmp_path / "short.png", images, pictures, caption="wheels")
    long = save_pca_grid(tmp_path / "long.png", images, pictures, caption=random)
    # A long caption wraps onto more lines of the same width, not past the edge.
    with Image.open(short) as one, Image.open(long) as many:
        assert one.width == many.width
        assert many.height > one.height
        assert many.info["Description"] == random
    jpeg = save_pca_grid(tmp_path / "pca.jpg", images, pictures, caption=random)
    assert Image.open(jpeg).height == Image.open(long).height
