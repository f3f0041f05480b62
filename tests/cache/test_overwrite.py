"""overwrite=True and remove_store delete what a store wrote, and refuse everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.cache import FeatureStore, extract_features, remove_store
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def user_dataset(folder: Path) -> Path:
    """A user's dataset folder: images, a README and their own label manifest.json."""
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "0001.png").write_bytes(b"\x89PNG picture")
    (folder / "README.md").write_text("my dataset\n")
    (folder / "manifest.json").write_text(json.dumps([{"path": "images/0001.png", "label": 1}]))
    return folder


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_with_a_users_manifest_is_never_deleted(
    frozen: FrozenBackbone, tmp_path: Path, overwrite: bool
) -> None:
    folder = user_dataset(tmp_path / "data")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"manifest\.json") as caught:
        extract_features(frozen, Images(2), path=folder, overwrite=overwrite, progress=False)
    message = str(caught.value)
    assert "manifest.json" in message
    assert "README.md" in message
    assert "images/" in message
    assert snapshot(folder) == before
    with pytest.raises(ValueError, match="nothing was deleted"):
        remove_store(folder)
    assert snapshot(folder) == before


def test_a_folder_of_bin_files_is_never_deleted(frozen: FrozenBackbone, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"weights" * 100)
    (folder / "class_tokens.bin").write_bytes(b"not a store's, there is no manifest")
    before = snapshot(folder)
    for overwrite in (True, False):
        with pytest.raises(ValueError, match=r"pytorch_model\.bin"):
            extract_features(frozen, Images(2), path=folder, overwrite=overwrite, progress=False)
    with pytest.raises(ValueError, match=r"class_tokens\.bin"):
        remove_store(folder)
    assert snapshot(folder) == before


def test_a_store_with_a_foreign_file_is_not_overwritten(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(3), path=path, progress=False)
    (path / "notes.txt").write_text("mine")
    before = snapshot(path)
    with pytest.raises(ValueError, match=r"refusing to overwrite .*notes\.txt"):
        extract_features(frozen, Images(4), path=path, overwrite=True, progress=False)
    assert snapshot(path) == before
    # Resuming (or reopening) touches none of it.
    assert len(extract_features(frozen, Images(3), path=path, progress=False)) == 3
    assert (path / "notes.txt").read_text() == "mine"


def test_a_manifest_naming_other_files_vouches_for_nothing(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(3), path=path, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["patch_mean"]["file"] = "pytorch_model.bin"
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "pytorch_model.bin").write_bytes(b"weights")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin"):
        remove_store(path)
    assert (path / "pytorch_model.bin").read_bytes() == b"weights"


def test_a_store_and_its_leftovers_are_overwritten(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(3), path=path, progress=False)
    (path / ".manifest.json.x1y2.tmp").write_text("{")  # a manifest write cut short
    (path / ".feature-store.lock").write_text("999999999 elsewhere\n")  # a dead writer's lock
    store = extract_features(frozen, Images(5), path=path, overwrite=True, progress=False)
    assert len(store) == 5
    assert not list(path.glob(".manifest.json.*"))
    assert not (path / ".feature-store.lock").exists()

    # remove_store deletes the store and the companion files named by the caller.
    (path / "dataset.json").write_text("{}")
    remove_store(path, companions=("dataset.json",))
    assert not path.exists()
    remove_store(path)  # a missing store is fine


def test_a_companion_file_beside_no_store_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match=r"dataset\.json"):
        remove_store(folder, companions=("dataset.json",))
    assert (folder / "dataset.json").exists()


def test_a_damaged_store_is_deleted_only_by_its_own_names(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(3), path=path, progress=False)
    (path / "manifest.json").write_text('{"format": "dinov2-heads/feature-store", "version":')
    # A manifest that cannot be read vouches for no data file.
    with pytest.raises(ValueError, match=r"class_tokens\.bin"):
        remove_store(path)
    assert (path / "class_tokens.bin").exists()
    with pytest.raises(ValueError, match="not a valid feature store manifest"):
        FeatureStore.open(path)
