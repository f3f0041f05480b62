"""The feature store on the command line: extract --overwrite, worker errors, inspect --verify."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureDataset, FeatureStore
from dinov2_heads.cli import main
from dinov2_heads.demo import BODY_TYPES, SyntheticVehicles


@dataclass(frozen=True)
class Files:
    checkpoint: Path
    folder: Path  # one sub-folder per body type


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    # 64 wide with one head: load_backbone infers the head count as D / 64.
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    torch.save(backbone.state_dict(), root / "tiny.pth")
    folder = SyntheticVehicles(6, seed=0, size=(28, 56)).write_folder(
        root / "by_body", label="body"
    )
    return Files(root / "tiny.pth", folder)


def extract(files: Files, out: Path, *extra: str, images: Path | None = None) -> int:
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(out)]
    return main([*argv, "--size", "28", "56", *extra, str(images or files.folder)])


def test_extract_keeps_class_names_in_the_store(files: Files, tmp_path: Path) -> None:
    assert extract(files, tmp_path / "store") == 0
    store = FeatureStore.open(tmp_path / "store")
    assert store.class_names == {"label": BODY_TYPES}
    features, labels = FeatureDataset(store, label="label")[0]
    assert features.batch_size == 1
    assert labels.dtype == torch.int64


def test_extract_overwrite_refuses_a_users_folder(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "dataset"
    shutil.copytree(files.folder, folder / "images")
    (folder / "manifest.json").write_text(json.dumps([{"path": "images/a.png"}]))
    before = sorted(str(p) for p in folder.rglob("*"))
    assert extract(files, folder, "--overwrite") == 1
    error = capsys.readouterr().err
    assert "refusing to overwrite" in error
    assert "manifest.json" in error
    assert sorted(str(p) for p in folder.rglob("*")) == before

    # A store made by extract (its dataset.json included) is overwritten.
    store = tmp_path / "store"
    assert extract(files, store) == 0
    assert extract(files, store, "--overwrite", "--keep", "patch_tokens") == 0
    assert FeatureStore.open(store).keep[-1] == "patch_tokens"
    assert (store / "dataset.json").is_file()


def test_a_broken_image_in_a_worker_names_its_file(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(files.folder, folder)
    broken = sorted(folder.rglob("*.png"))[-1]
    broken.write_bytes(b"not a png")
    assert (
        extract(files, tmp_path / "store", "--num-workers", "2", "--batch-size", "2", images=folder)
        == 1
    )
    error = capsys.readouterr().err
    assert f"cannot read image {broken}" in error
    assert "DataLoader worker" not in error


def test_inspect_verifies_a_store(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert extract(files, store) == 0
    capsys.readouterr()
    assert main(["inspect", str(store), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("FeatureStore(")
    assert "label: 4 classes (bus, sedan, suv, truck)" in printed
    assert "verified 4 files" in printed
    assert "sizes and sha256 match" in printed
    assert main(["inspect", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "dinov2-heads/feature-store"

    data = store / "class_tokens.bin"
    data.write_bytes(bytes(b ^ 1 for b in data.read_bytes()))
    assert main(["inspect", str(store)]) == 0  # sizes fit: only --verify reads every byte
    capsys.readouterr()
    assert main(["inspect", str(store), "--verify"]) == 1
    error = capsys.readouterr().err
    assert "class_tokens.bin has sha256" in error
    assert main(["inspect", str(files.checkpoint), "--verify"]) == 1
    assert "--verify checks a feature store folder" in capsys.readouterr().err
