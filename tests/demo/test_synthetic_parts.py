"""Part masks of the synthetic vehicles: aligned with the images, reproducible, readable back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.data import SegmentationDataset, SegmentationTransform
from dinov2_heads.demo import PART_PALETTE, PARTS, SyntheticVehicles


def test_parts_cover_the_vehicle_and_only_it() -> None:
    vehicles = SyntheticVehicles(8, seed=3)
    seen = torch.zeros(len(PARTS), dtype=torch.int64)
    for index in range(len(vehicles)):
        parts = vehicles.part_mask(index)
        assert parts.shape == (126, 252)
        assert parts.dtype == torch.int64
        # The silhouette (rendered and downsampled on its own) and the parts agree almost
        # everywhere: only anti-aliased edge pixels may differ.
        agree = ((parts > 0) == vehicles.vehicle_mask(index)).float().mean()
        assert agree > 0.98
        seen += torch.bincount(parts.flatten(), minlength=len(PARTS))
        assert torch.equal(parts, vehicles.part_mask(index))  # reproducible
    assert (seen > 0).all()  # every part occurs in a few images
    assert len(PART_PALETTE) == len(PARTS)


def test_windows_are_glass_coloured_pixels() -> None:
    vehicles = SyntheticVehicles(4, seed=0)
    for index in range(4):
        image = vehicles.image_tensor(index).long()
        windows = vehicles.part_mask(index) == PARTS.index("windows")
        # Inside the windows (away from their edges) the image shows the dark blue glass.
        inner = windows & torch.roll(windows, 1, 0) & torch.roll(windows, -1, 0)
        inner &= torch.roll(windows, 1, 1) & torch.roll(windows, -1, 1)
        pixels = image[:, inner]
        assert pixels.shape[1] > 0
        median = pixels.median(dim=1).values
        assert (median - torch.tensor([42, 52, 68])).abs().max() <= 6, median


def test_segmentation_view_and_files(tmp_path: Path) -> None:
    vehicles = SyntheticVehicles(3, seed=1)
    image, mask = vehicles.parts()[1]
    assert image.shape == (3, 126, 252)
    assert torch.equal(mask, vehicles.part_mask(1))
    cropped = vehicles.parts(SegmentationTransform(crop_size=(112, 112), flip=0.5, seed=0))
    image, mask = cropped[0]
    assert image.shape == (3, 112, 112)
    assert mask.shape == (112, 112)
    root = vehicles.write_parts(tmp_path / "parts")
    dataset = SegmentationDataset.from_folders(root / "images", root / "masks")
    assert len(dataset) == 3
    for index in range(3):
        assert torch.equal(dataset[index][1], vehicles.part_mask(index))


@pytest.mark.parametrize("size", [(126, 252), (56, 112)])
def test_masks_line_up_with_the_picture(size: tuple[int, int]) -> None:
    # Every pixel of the picture in the vehicle's paint lies on the vehicle's silhouette and
    # on one of its parts (a black paint may match the emblem's badge); masks drawn anywhere
    # else would break both.
    vehicles = SyntheticVehicles(12, size=size, seed=5)
    for index in range(len(vehicles)):
        scene = vehicles.scene(index)
        image = vehicles.image_tensor(index).long()
        paint = torch.tensor(scene.paint)[:, None, None]
        painted = (image - paint).abs().amax(dim=0) <= 2
        assert painted.sum() > 50
        silhouette = vehicles.vehicle_mask(index)
        on_vehicle = vehicles.part_mask(index) > 0
        assert float(silhouette[painted].float().mean()) > 0.99, index
        assert float(on_vehicle[painted].float().mean()) > 0.99, index
