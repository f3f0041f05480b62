"""``dinov2-heads extract`` hands uint8 pixels to the backbone: the stores are those of before.

The command builds its ``Preprocess`` with ``normalize=False`` and lets the ``FrozenBackbone``
normalise on its device; on the CPU its stores equal, bit for bit, stores extracted from
normalised float images, and it resumes a store that was started that way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from dinov2_heads.cache import FeatureStore, extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.cli import main
from dinov2_heads.data import ImageFolderDataset, Preprocess
from dinov2_heads.features import FrozenBackbone

from .conftest import Files

#: What ``--size 28 56`` prepares a new store with (draft decoding on), normalised floats.
BEFORE = Preprocess(resize=(28, 56), draft=True)


class Interrupted(Dataset[Any]):
    """``dataset`` that raises when ``index`` is read, as an interruption would."""

    def __init__(self, dataset: ImageFolderDataset, index: int) -> None:
        self.dataset = dataset
        self.index = index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index == self.index:
            raise RuntimeError(f"interrupted while reading sample {index}")
        return self.dataset[index]


def the_old_way(files: Files, data: Any, path: Path | None) -> FeatureStore:
    """A store extracted as the command did before: normalised float images."""
    return extract_features(
        FrozenBackbone(load_backbone(files.checkpoint)),
        data,
        path=path,
        batch_size=2,
        num_workers=0,
        preprocessing=BEFORE,
        progress=False,
    )


def run(files: Files, out: Path, *extra: str) -> int:
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(out)]
    return main([*argv, "--size", "28", "56", "--batch-size", "2", *extra, str(files.folder)])


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert a.manifest.preprocessing == b.manifest.preprocessing
    assert a.layout.arrays.keys() == b.layout.arrays.keys()
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


@pytest.mark.parametrize("workers", ["0", "1"])
def test_the_command_writes_the_store_of_normalised_images(
    files: Files, tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "store"
    assert run(files, out, "--num-workers", workers) == 0
    made = FeatureStore.open(out, preprocessing=BEFORE)
    assert made.manifest.preprocessing == json.loads(json.dumps(BEFORE.description()))
    assert_same_store(made, the_old_way(files, ImageFolderDataset(files.folder, BEFORE), None))


def test_a_store_started_before_resumes(files: Files, tmp_path: Path) -> None:
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"):
        the_old_way(files, Interrupted(ImageFolderDataset(files.folder, BEFORE), 5), out)
    assert json.loads((out / "manifest.json").read_text())["written"] == 4
    assert run(files, out, "--num-workers", "0") == 0
    resumed = FeatureStore.open(out)
    assert resumed.complete
    assert_same_store(resumed, the_old_way(files, ImageFolderDataset(files.folder, BEFORE), None))
