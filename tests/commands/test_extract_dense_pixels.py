"""``dinov2-heads extract --masks / --depths`` hands uint8 pixels on: the stores of before.

The command's ``PairPreprocess`` stops before normalising (``normalize=False``) and the
``FrozenBackbone`` normalises on its device with the same mean and std. On the CPU its stores
equal, bit for bit, stores extracted from normalised float images as the command did before
(with and without a worker), record the same preprocessing, and a store started that way
resumes.
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
from dinov2_heads.commands._extract_dense import PairPreprocess
from dinov2_heads.data import DepthDataset, SegmentationDataset
from dinov2_heads.demo import SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearDepthHead, LinearSegmentationHead

from .conftest import SIZE, Files

#: ``--size 42 84``: the pairs are resized (images bicubic, labels nearest) before the store.
RESIZE = (42, 84)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense-pixels")
    vehicles = SyntheticVehicles(7, seed=1, size=SIZE)
    parts = vehicles.write_parts(root / "parts")
    scenes = SyntheticDepthPairs(vehicles, fog=6.0).write_folders(root / "scenes", scale="kitti")
    return {
        "segmentation_images": parts / "images",
        "segmentation_labels": parts / "masks",
        "depth_images": scenes / "images",
        "depth_labels": scenes / "depth",
    }


class Interrupted(Dataset[Any]):
    """``data`` that raises when ``index`` is read, as an interruption would."""

    def __init__(self, data: Any, index: int) -> None:
        self.data = data
        self.index = index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        if index == self.index:
            raise RuntimeError(f"interrupted while reading sample {index}")
        return self.data[index]


def before(
    files: Files, folders: dict[str, Path], task: str, path: Path | None, fail_at: int | None = None
) -> FeatureStore:
    """A store extracted as the command did before: normalised float images."""
    transform = PairPreprocess(resize=RESIZE)
    images, labels = folders[f"{task}_images"], folders[f"{task}_labels"]
    data: Any = (
        SegmentationDataset.from_folders(images, labels, transform)
        if task == "segmentation"
        else DepthDataset.from_folders(images, labels, scale="kitti", transform=transform)
    )
    head = LinearSegmentationHead(64, 1) if task == "segmentation" else LinearDepthHead(64)
    return extract_features(
        FrozenBackbone.for_heads(load_backbone(files.checkpoint), head),
        data if fail_at is None else Interrupted(data, fail_at),
        path=path,
        batch_size=2,
        num_workers=0,
        preprocessing=transform,
        progress=False,
    )


def run(files: Files, folders: dict[str, Path], task: str, out: Path, *extra: str) -> int:
    option = "--masks" if task == "segmentation" else "--depths"
    scale = ["--depth-scale", "kitti"] if task == "depth" else []
    return main(
        [
            "--quiet",
            "extract",
            "--checkpoint",
            str(files.checkpoint),
            "--out",
            str(out),
            "--size",
            *map(str, RESIZE),
            "--batch-size",
            "2",
            option,
            str(folders[f"{task}_labels"]),
            *scale,
            *extra,
            str(folders[f"{task}_images"]),
        ]
    )


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert a.manifest.preprocessing == b.manifest.preprocessing
    assert a.layout.blocks == b.layout.blocks
    assert a.layout.input_size == b.layout.input_size == RESIZE
    assert a.layout.arrays.keys() == b.layout.arrays.keys()
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


def test_the_transform_hands_on_pixels_and_describes_itself_as_before() -> None:
    pixels = PairPreprocess(resize=RESIZE, normalize=False)
    assert pixels.description() == PairPreprocess(resize=RESIZE).description()
    assert "normalize" not in pixels.description()
    image = torch.randint(0, 256, (3, *SIZE), dtype=torch.uint8)
    mask = torch.zeros(SIZE, dtype=torch.int64)
    resized, label = pixels(image, mask)
    assert resized.dtype == torch.uint8
    assert label.shape == RESIZE
    floats, _ = PairPreprocess(resize=RESIZE)(image, mask)
    from dinov2_heads.data import normalize

    assert torch.equal(normalize(resized), floats)
    with pytest.raises(ValueError, match=r"normalize=False\) hands on uint8"):
        pixels(image.float() / 255, mask)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_the_commands_pairs_are_pixels_and_its_backbone_normalises_them(
    files: Files, folders: dict[str, Path], tmp_path: Path, task: str
) -> None:
    from dinov2_heads.cli import build_parser
    from dinov2_heads.commands import _extract_dense

    labels = ["--masks"] if task == "segmentation" else ["--depth-scale", "kitti", "--depths"]
    args = build_parser().parse_args(
        ["extract", "--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "store"),
         "--preset", "vehicle_crop", *labels, str(folders[f"{task}_labels"]),
         str(folders[f"{task}_images"])]
    )  # fmt: skip
    data, _ = _extract_dense.dataset(args)
    image, _ = data[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, 126, 252)
    frozen = _extract_dense.frozen_backbone(
        args, load_backbone(files.checkpoint), None, data.preprocessing
    )
    assert (frozen.mean, frozen.std) == (data.preprocessing.mean, data.preprocessing.std)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize("workers", ["0", "1"])
def test_the_command_writes_the_store_of_normalised_images(
    files: Files, folders: dict[str, Path], tmp_path: Path, task: str, workers: str
) -> None:
    out = tmp_path / "store"
    assert run(files, folders, task, out, "--num-workers", workers) == 0
    made = FeatureStore.open(out)
    recorded = json.loads(json.dumps(PairPreprocess(resize=RESIZE).description()))
    assert made.manifest.preprocessing == recorded
    assert_same_store(made, before(files, folders, task, None))


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_a_store_started_before_resumes(
    files: Files, folders: dict[str, Path], tmp_path: Path, task: str
) -> None:
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"):
        before(files, folders, task, out, fail_at=5)
    assert json.loads((out / "manifest.json").read_text())["written"] == 4
    assert run(files, folders, task, out, "--num-workers", "0") == 0
    resumed = FeatureStore.open(out)
    assert resumed.complete
    assert_same_store(resumed, before(files, folders, task, None))
