"""extract_features on ``uint8`` pixels (``Preprocess(..., normalize=False)``): the same store.

The backbone normalises the pixels on its device; the features, and so the store, are those of
normalised float images bit for bit on the CPU, and the recorded preprocessing is the same, so a
store started one way resumes the other way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from dinov2_heads.cache import FeatureStore, extract_features
from dinov2_heads.cache.batches import split_batch
from dinov2_heads.data import ImageFolderDataset, Preprocess
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import layout_of
from tests.data.conftest import noise_image

PREPROCESS = Preprocess(resize=(28, 42))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of PNG files of assorted sizes."""
    root = tmp_path_factory.mktemp("pixels") / "folder"
    for index in range(7):
        path = root / ("cat" if index % 2 else "dog") / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        noise_image(40 + 5 * index, 60 + 3 * index, seed=index).save(path)
    return root


class Interrupted(Dataset[Any]):
    """``dataset`` that raises once, as an interruption would, when ``index`` is read."""

    def __init__(self, dataset: ImageFolderDataset, index: int) -> None:
        self.dataset = dataset
        self.index: int | None = index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index == self.index:
            self.index = None
            raise RuntimeError(f"interrupted while reading sample {index}")
        return self.dataset[index]


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert layout_of(a) == layout_of(b)
    assert a.manifest.preprocessing == b.manifest.preprocessing
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


def extract(frozen: FrozenBackbone, data: Any, path: Path | None, **kwargs: Any) -> FeatureStore:
    settings: dict[str, Any] = {
        "batch_size": 3,
        "preprocessing": PREPROCESS,
        "progress": False,
        "keep": "patch_tokens",
        "dtype": torch.float32,
        "num_workers": 0,
    }
    return extract_features(frozen, data, path=path, **{**settings, **kwargs})


def test_the_batches_are_uint8_and_the_store_is_the_float_one(
    frozen: FrozenBackbone, folder: Path
) -> None:
    pixels = ImageFolderDataset(folder, PREPROCESS.replace(normalize=False))
    floats = ImageFolderDataset(folder, PREPROCESS)
    image, _ = pixels[0]
    assert image.dtype == torch.uint8
    assert split_batch((image[None], torch.tensor([0]))).images.dtype == torch.uint8
    assert_same_store(extract(frozen, pixels, None), extract(frozen, floats, None))


def test_workers_hand_on_uint8_batches(frozen: FrozenBackbone, folder: Path) -> None:
    # The DataLoader's workers put uint8 batches into shared memory, a quarter of float32's.
    pixels = ImageFolderDataset(folder, PREPROCESS.replace(normalize=False))
    floats = ImageFolderDataset(folder, PREPROCESS)
    assert_same_store(
        extract(frozen, pixels, None, num_workers=2, dtype=torch.float16),
        extract(frozen, floats, None, dtype=torch.float16),
    )


@pytest.mark.parametrize("started_normalised", [True, False])
def test_a_store_started_one_way_resumes_the_other_way(
    frozen: FrozenBackbone, folder: Path, tmp_path: Path, started_normalised: bool
) -> None:
    # A store started with normalised images is what every store made before uint8 hand-off is.
    started = PREPROCESS.replace(normalize=started_normalised)
    resumed = PREPROCESS.replace(normalize=not started_normalised)
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"):
        extract(frozen, Interrupted(ImageFolderDataset(folder, started), 4), path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["written"] == 3  # the first batch is kept
    assert "normalize" not in manifest["preprocessing"]
    store = extract(frozen, ImageFolderDataset(folder, resumed), path, preprocessing=resumed)
    assert store.complete
    assert_same_store(store, extract(frozen, ImageFolderDataset(folder, PREPROCESS), None))
    FeatureStore.open(path, preprocessing=PREPROCESS)
    FeatureStore.open(path, preprocessing=PREPROCESS.replace(normalize=False))
