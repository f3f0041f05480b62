"""Fog over a picture whose depth is known, and the synthetic depth scenes drawn in it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.data import DepthDataset
from dinov2_heads.demo import SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.demo.fog import FOG_COLOUR, FOG_DISTANCE, add_fog


def test_far_things_fade_into_the_fog() -> None:
    image = torch.zeros(3, 1, 4, dtype=torch.uint8)  # four black pixels
    depth = torch.tensor([[[0.0, 0.001, FOG_DISTANCE, 1e4]]])
    fogged = add_fog(image, depth)
    assert fogged.dtype == torch.uint8
    fog = torch.tensor(FOG_COLOUR)
    assert torch.equal(fogged[:, 0, 0], fog)  # no depth: the sky, infinitely far
    assert torch.equal(fogged[:, 0, 1], torch.zeros(3, dtype=torch.uint8))  # at the camera
    expected = (fog * (1 - torch.exp(torch.tensor(-1.0)))).round()
    assert torch.equal(fogged[:, 0, 2].float(), expected)  # 1/e of the colour left
    assert torch.equal(fogged[:, 0, 3], fog)
    # Denser fog (a shorter distance) hides more at the same depth.
    thin = add_fog(image, depth, distance=2 * FOG_DISTANCE)[:, 0, 2]
    assert (thin < fogged[:, 0, 2]).all()


@pytest.mark.parametrize(
    ("image", "depth", "kwargs", "match"),
    [
        (torch.zeros(3, 2, 2), torch.ones(1, 2, 2), {}, "uint8 image"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(1, 2, 3), {}, "image's size"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(2, 2), {"distance": 0.0}, "positive"),
        (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(2, 2), {"colour": (1, 2)}, "three"),
    ],
)
def test_bad_inputs(image: torch.Tensor, depth: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        add_fog(image, depth, **kwargs)


def test_depth_pairs_in_fog(tmp_path: Path) -> None:
    vehicles = SyntheticVehicles(2, size=(42, 84))
    clear, foggy = SyntheticDepthPairs(vehicles), SyntheticDepthPairs(vehicles, fog=5.0)
    image, depth = foggy.raw(1)
    assert torch.equal(depth, clear.raw(1)[1])  # the fog changes the picture, not the depth
    assert torch.equal(image, add_fog(vehicles.image_tensor(1), depth, distance=5.0))
    assert not torch.equal(image, clear.raw(1)[0])
    root = foggy.write_folders(tmp_path / "pairs", scale="kitti")
    read_image, read_depth = DepthDataset.from_folders(
        root / "images", root / "depth", scale="kitti"
    )[1]
    assert torch.allclose(read_image, foggy[1][0], atol=1e-5)
    assert (read_depth - depth).abs().max() <= 0.5 / 256 + 1e-5
