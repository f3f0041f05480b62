from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.data import DepthDataset, DepthTransform
from dinov2_heads.demo import SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.demo.street_depth import (
    BUILDING_DEPTH,
    FAR_DEPTH,
    FOCAL,
    VEHICLE_HEIGHTS,
    scene_depth,
)

SIZE = (56, 112)


def test_depth_map_geometry() -> None:
    dataset = SyntheticVehicles(8, size=SIZE)
    for index in range(8):
        depth = dataset.depth_map(index)
        assert depth.shape == (1, *SIZE)
        assert depth.dtype == torch.float32
        layout = dataset.scene(index)
        assert torch.equal(depth, scene_depth(layout, dataset.vehicle_mask(index)))
        horizon = int(layout.horizon)
        # The sky has no depth, and nothing is negative or beyond the far plane.
        assert float(depth[0, 0].min()) >= 0
        assert float(depth.max()) <= FAR_DEPTH
        assert (depth == 0).any()
        # The ground comes nearer row by row below the horizon (left edge column, no vehicle).
        column = depth[0, horizon + 1 :, 0]
        vehicle_rows = column < column.roll(-1)  # a vehicle in front breaks the trend
        if not vehicle_rows[:-1].any():
            assert torch.all(column[1:] <= column[:-1])
        # The vehicle's lower body faces the camera at f * real height / box height...
        left, top, width, height = layout.box
        vehicle = dataset.vehicle(index)
        distance = FOCAL * SIZE[0] * VEHICLE_HEIGHTS[vehicle.body] / height
        face = float(depth[0, int(top + 0.75 * height), int(left + width / 2)])
        assert face == pytest.approx(distance, rel=1e-4)
        # ...and stands on the ground: a ground pixel row r is at distance * (bottom - horizon)
        # / (r + 0.5 - horizon), which equals the vehicle's distance at the box bottom.
        bottom = top + height
        row = min(int(bottom) + 1, SIZE[0] - 1)
        expected = distance * (bottom - layout.horizon) / (row + 0.5 - layout.horizon)
        assert float(depth[0, row, 0]) == pytest.approx(min(expected, FAR_DEPTH), rel=1e-4)


def test_depth_aligns_with_the_rendered_vehicle() -> None:
    dataset = SyntheticVehicles(6, size=SIZE)
    for index in range(6):
        image = dataset.image_tensor(index)
        depth = dataset.depth_map(index)[0]
        sky = depth == 0
        colours = image[:, sky].T
        values, counts = torch.unique(colours, dim=0, return_counts=True)
        sky_colour = values[counts.argmax()]
        # Pixels the depth map calls sky show the sky colour (edges aside)...
        assert float(counts.max()) / colours.shape[0] > 0.95
        # ...and the vehicle pixels (the nearest ones) do not.
        vehicle = (depth > 0) & (depth < depth[depth > 0].min() + 0.6)
        on_vehicle = image[:, vehicle].T
        assert float((on_vehicle == sky_colour).all(dim=1).float().mean()) < 0.02


def test_buildings_stand_at_their_distance() -> None:
    dataset = SyntheticVehicles(20, size=SIZE)
    with_buildings = [i for i in range(20) if dataset.scene(i).buildings]
    assert with_buildings
    # Some buildings stand behind the vehicle or outside the picture; most show.
    assert any((dataset.depth_map(i) == BUILDING_DEPTH).any() for i in with_buildings)


def test_pairs_dataset_transform_and_folders(tmp_path: Path) -> None:
    vehicles = SyntheticVehicles(3, size=(42, 84))
    pairs = SyntheticDepthPairs(vehicles)
    image, depth = pairs[1]
    assert image.shape == (3, 42, 84)
    assert torch.allclose(image, vehicles[1][0], atol=1e-5)
    assert torch.equal(depth, vehicles.depth_map(1))
    images, depths = next(pairs.batches(2))
    assert images.shape == (2, 3, 42, 84)
    assert depths.shape == (2, 1, 42, 84)
    cropped = SyntheticDepthPairs(vehicles, DepthTransform(crop_size=(28, 56), seed=0))
    assert cropped[-1][1].shape == (1, 28, 56)

    root = pairs.write_folders(tmp_path / "pairs", scale="kitti")
    read = DepthDataset.from_folders(root / "images", root / "depth", scale="kitti")
    assert len(read) == 3
    read_image, read_depth = read[1]
    assert torch.allclose(read_image, image, atol=1e-5)
    assert (read_depth - depth).abs().max() <= 0.5 / 256 + 1e-5
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(pairs.batches(0))
