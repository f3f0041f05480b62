from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads.viz import colourize_depth, depth_range, save_depth_picture


def ramp(height: int = 30, width: int = 40) -> torch.Tensor:
    """Depth growing from 1 m (top) to 10 m (bottom), with a patch of missing pixels."""
    depth = torch.linspace(1.0, 10.0, height)[:, None].expand(height, width).clone()
    depth[:4, :4] = 0.0
    return depth


def test_near_is_bright_and_missing_pixels_are_marked() -> None:
    depth = ramp()
    assert depth_range(depth) == (1.0, 10.0)
    picture = colourize_depth(depth, colourmap="gray")
    assert picture.shape == (3, 30, 40)
    assert picture.min() >= 0
    assert picture.max() <= 1
    assert torch.allclose(picture[:, 0, 10], torch.ones(3), atol=1e-3)  # 1 m: bright
    assert torch.allclose(picture[:, -1, 10], torch.zeros(3), atol=1e-3)  # 10 m: dark
    assert torch.equal(picture[:, 0, 0], torch.zeros(3))  # missing: invalid colour
    far_bright = colourize_depth(depth, colourmap="gray", near_is_bright=False, vmax=20.0)
    assert float(far_bright[0, -1, 10]) == pytest.approx(0.4737, abs=1e-3)  # (10 - 1) / 19
    red = colourize_depth(depth, invalid_colour=(1.0, 0.0, 0.0))
    assert red[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert depth_range(torch.zeros(3, 3)) == (0.0, 1.0)


def test_picture_holds_image_depth_and_bar(tmp_path: Path) -> None:
    depth = ramp()
    image = torch.zeros(3, 30, 40, dtype=torch.uint8)
    image[0] = 200
    path = save_depth_picture(tmp_path / "out" / "depth.png", depth[None], image, colourmap="gray")
    assert path == tmp_path / "out" / "depth.png"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    # padding 4, image 40, padding 4, depth 40, padding 4, bar 14, padding 4, labels 64.
    assert pixels.shape == (38, 4 + 40 + 4 + 40 + 4 + 14 + 4 + 64, 3)
    assert tuple(pixels[10, 10]) == (200, 0, 0)
    assert pixels[4 + 29, 48 + 10].max() <= 2  # the far bottom row of the depth: dark
    bar = pixels[4:34, 92 + 5, 0].astype(int)
    assert bar[0] < 5  # far, at the top of the bar: dark
    assert bar[-1] > 250  # near: bright
    labels = pixels[:, 110:, :]
    assert (labels < 128).any()  # the depths are written beside the bar
    no_bar = save_depth_picture(tmp_path / "plain.png", depth, colour_bar=False, padding=0)
    assert Image.open(no_bar).size == (40, 30)


def test_depth_of_another_size_is_resized_to_the_image(tmp_path: Path) -> None:
    path = save_depth_picture(tmp_path / "d.png", ramp(15, 20), torch.rand(1, 3, 30, 40))
    assert Image.open(path).size[1] == 38


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one depth map"):
        save_depth_picture(tmp_path / "a.png", torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="finite vmin < vmax"):
        colourize_depth(ramp(), vmin=5.0, vmax=5.0)
    with pytest.raises(ValueError, match="expected one image"):
        save_depth_picture(tmp_path / "a.png", ramp(), torch.rand(2, 3, 30, 40))
    with pytest.raises(ValueError, match=r"cannot write a picture as '\.txt'"):
        save_depth_picture(tmp_path / "a.txt", ramp())
    with pytest.raises(ValueError, match="invalid_colour"):
        colourize_depth(ramp(), invalid_colour=(2.0, 0.0, 0.0))
