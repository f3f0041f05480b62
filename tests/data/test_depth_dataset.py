from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_heads.data import (
    DepthDataset,
    DepthTransform,
    UnreadableDepthError,
    UnreadableImageError,
    normalize,
    write_depth_png,
)
from tests.data.conftest import write_image


def write_pairs(root: Path, count: int = 3, size: tuple[int, int] = (20, 30)) -> Path:
    for index in range(count):
        write_image(root / "images" / "scene" / f"{index:03d}.jpg", *size, seed=index)
        depth = torch.full((1, *size), 1.0 + index)
        depth[0, 0, 0] = 0.0
        path = root / "depth" / "scene" / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_depth_png(path, depth, scale="nyu")
    return root


def test_folders_pair_by_name_and_read_metres(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    dataset = DepthDataset.from_folders(root / "images", root / "depth", scale="nyu")
    assert len(dataset) == 3
    assert [p.stem for p, _ in dataset.pairs] == ["000", "001", "002"]
    image, depth = dataset[2]
    raw_image, raw_depth = dataset.load(2)
    assert image.shape == (3, 20, 30)
    assert torch.allclose(image, normalize(raw_image))
    assert depth.shape == (1, 20, 30)
    assert float(depth[0, 0, 0]) == 0.0
    assert float(depth[0, 5, 5]) == pytest.approx(3.0)
    assert torch.equal(depth, raw_depth)
    loader = DataLoader(dataset, batch_size=2)
    images, depths = next(iter(loader))
    assert images.shape == (2, 3, 20, 30)
    assert depths.shape == (2, 1, 20, 30)


def test_manifest_with_npy_depth_and_a_training_transform(tmp_path: Path) -> None:
    rows = []
    for index in range(2):
        write_image(tmp_path / f"img{index}.png", 28, 42, seed=index)
        np.save(tmp_path / f"depth{index}.npy", np.full((28, 42), 2.5, np.float32))
        rows.append({"image": f"img{index}.png", "depth": f"depth{index}.npy"})
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    transform = DepthTransform(crop_size=(14, 28), seed=0)
    dataset = DepthDataset.from_manifest(tmp_path / "pairs.json", transform=transform)
    image, depth = dataset[1]
    assert image.shape == (3, 14, 28)
    assert torch.equal(depth, torch.full((1, 14, 28), 2.5))


def test_an_unreadable_image_advises_what_a_dataset_user_can_do(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    dataset = DepthDataset.from_folders(root / "images", root / "depth", scale="nyu")
    image = dataset.pairs[1][0]
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(UnreadableImageError) as caught:
        dataset[1]
    message = str(caught.value)
    assert message.startswith(f"cannot read image {image}: ")
    assert "on_error" not in message  # DepthDataset has no such option
    assert message.endswith(
        "or leave its pair out of the dataset (both files from the "
        "folders, or its entry from the lists or the manifest)"
    )
    depth = dataset.pairs[2][1]
    depth.write_bytes(depth.read_bytes()[:40])
    with pytest.raises(UnreadableDepthError) as unreadable:
        dataset[2]
    assert str(unreadable.value).startswith(f"cannot read depth map {depth}: ")
    assert "on_error" not in str(unreadable.value)


def test_mismatches_are_refused(tmp_path: Path) -> None:
    root = write_pairs(tmp_path)
    (root / "depth" / "scene" / "001.png").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) have no depth map .*001\.jpg"):
        DepthDataset.from_folders(root / "images", root / "depth", scale="nyu")
    write_image(tmp_path / "odd" / "a.png", 20, 30)
    write_depth_png(tmp_path / "odd_depth.png", torch.ones(20, 31))
    dataset = DepthDataset([(tmp_path / "odd" / "a.png", tmp_path / "odd_depth.png")], scale="nyu")
    with pytest.raises(ValueError, match="the depth map is 20x31 but its image is 20x30"):
        dataset[0]
    (tmp_path / "bad.csv").write_text("image,depth\na.png,\n")
    with pytest.raises(ValueError, match="row 1: needs both"):
        DepthDataset.from_manifest(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DepthDataset.from_folders(tmp_path / "nope", root / "depth")
