"""Dense pairs extracted from ``uint8`` pixels (``normalize=False`` transforms): the same stores.

``SegmentationDataset`` / ``DepthDataset`` with ``SegmentationTransform(normalize=False)`` /
``DepthTransform.evaluation(normalize=False)`` hand ``uint8`` images beside their masks or depth
maps; the ``FrozenBackbone`` normalises them on its device. The stores (chosen blocks, tokens,
masks, depth maps) equal those of normalised float images bit for bit on the CPU, with and
without a worker, and the transforms' recorded descriptions do not change, so a store started
one way (every store made before) resumes the other way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureStore, extract_features
from dinov2_heads.data import (
    DepthDataset,
    DepthTransform,
    SegmentationDataset,
    SegmentationTransform,
)
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import DPTDepthHead, LinearSegmentationHead
from tests.cache.conftest import layout_of
from tests.data.conftest import noise_image

SIZE = (28, 42)
COUNT = 7

#: What ``describe_preprocessing`` recorded for the default transforms before ``normalize``
#: existed: the form every store made with them holds.
BEFORE = {
    "SegmentationTransform": {
        "type": "SegmentationTransform",
        "crop_size": None,
        "scale_range": None,
        "flip": 0.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "seed": None,
        "generator": None,
    },
    "DepthTransform": {
        "type": "DepthTransform",
        "crop_size": None,
        "flip": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "saturation": 0.0,
        "hue": 0.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "seed": None,
        "generator": None,
        "_last_seed": None,
        "_seeded_in": None,
    },
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Noise images with a mask (classes 0..3, 255 in a corner) and a depth map (.npy) each."""
    root = tmp_path_factory.mktemp("dense_pixels")
    found: dict[str, list[Path]] = {"images": [], "masks": [], "depths": []}
    rng = np.random.default_rng(0)
    for index in range(COUNT):
        image = root / f"{index}.png"
        noise_image(*SIZE, seed=index).save(image)
        mask = rng.integers(0, 4, SIZE).astype(np.uint8)
        mask[:3, :5] = 255
        Image.fromarray(mask).save(root / f"{index}_mask.png")
        np.save(root / f"{index}_depth.npy", rng.uniform(0.5, 9.5, SIZE).astype(np.float32))
        found["images"].append(image)
        found["masks"].append(root / f"{index}_mask.png")
        found["depths"].append(root / f"{index}_depth.npy")
    return found


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("dinov2_vits14", depth=4, embed_dim=32, num_heads=2, img_size=56)


def segmentation(files: dict[str, list[Path]], normalize: bool) -> SegmentationDataset:
    transform = SegmentationTransform(normalize=normalize)
    return SegmentationDataset(files["images"], files["masks"], transform)


def depth(files: dict[str, list[Path]], normalize: bool) -> DepthDataset:
    pairs = list(zip(files["images"], files["depths"], strict=True))
    return DepthDataset(pairs, transform=DepthTransform.evaluation(normalize=normalize))


def frozen_for(task: str) -> FrozenBackbone:
    head = LinearSegmentationHead(32, 4, layers=4) if task == "segmentation" else DPTDepthHead(32)
    return FrozenBackbone.for_heads(backbone(), head)


def dataset(files: dict[str, list[Path]], task: str, normalize: bool) -> Any:
    return segmentation(files, normalize) if task == "segmentation" else depth(files, normalize)


def extract(task: str, data: Any, path: Path | None, **kwargs: Any) -> FeatureStore:
    settings: dict[str, Any] = {
        "batch_size": 3,
        "progress": False,
        "dtype": torch.float32,
        "num_workers": 0,
        "preprocessing": data.transform,
    }
    return extract_features(frozen_for(task), data, path=path, **{**settings, **kwargs})


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert layout_of(a) == layout_of(b)
    assert a.manifest.preprocessing == b.manifest.preprocessing
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


class Interrupted(Dataset[Any]):
    """``data`` that raises once, as an interruption would, when ``index`` is read."""

    def __init__(self, data: Any, index: int) -> None:
        self.data = data
        self.transform = data.transform
        self.index: int | None = index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        if index == self.index:
            self.index = None
            raise RuntimeError(f"interrupted while reading sample {index}")
        return self.data[index]


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize("workers", [0, 1])
def test_pixels_give_the_store_of_normalised_images(
    files: dict[str, list[Path]], task: str, workers: int
) -> None:
    pixels = dataset(files, task, normalize=False)
    image, label = pixels[0]
    assert image.dtype == torch.uint8
    assert label.dtype == (torch.int64 if task == "segmentation" else torch.float32)
    made = extract(task, pixels, None, num_workers=workers)
    expected = extract(task, dataset(files, task, normalize=True), None)
    assert made.layout.blocks  # the blocks the dense head reads are stored
    assert_same_store(made, expected)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize("started_normalised", [True, False])
def test_a_store_started_one_way_resumes_the_other_way(
    files: dict[str, list[Path]], tmp_path: Path, task: str, started_normalised: bool
) -> None:
    path = tmp_path / "store"
    started = dataset(files, task, normalize=started_normalised)
    with pytest.raises(RuntimeError, match="interrupted"):
        extract(task, Interrupted(started, 4), path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["written"] == 3
    # The description of the stores made before the option existed, either way.
    assert manifest["preprocessing"] == BEFORE[type(started.transform).__name__]
    store = extract(task, dataset(files, task, normalize=not started_normalised), path)
    assert store.complete
    assert_same_store(store, extract(task, dataset(files, task, normalize=True), None))
