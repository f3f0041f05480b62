"""Every batch is checked: label columns by name, one kind of label values, one image size,
and the class names of each label kept in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Subset

from dinov2_heads.cache import FeatureDataset, FeatureStore, StoreMismatchError, extract_features
from dinov2_heads.data import ImageFolderDataset, Preprocess
from dinov2_heads.demo import BODY_TYPES, SyntheticVehicles
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images, Samples


def items(count: int, label: Any) -> Samples:
    """``count`` images with the labels ``label(index)``."""
    data = Images(count)
    return Samples([(data.image(i), label(i)) for i in range(count)])


def test_dict_columns_are_stored_by_name_whatever_their_order(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    def label(i: int) -> dict[str, int]:
        colour, kind = i % 3, 10 + i % 2
        return {"colour": colour, "type": kind} if i < 4 else {"type": kind, "colour": colour}

    for path in (tmp_path / "store", None):
        store = extract_features(frozen, items(8, label), path=path, batch_size=2, progress=False)
        assert store.label_columns == ["colour", "type"]
        labels = store.labels(slice(None))
        assert isinstance(labels, dict)
        assert labels["colour"].tolist() == [i % 3 for i in range(8)]
        assert labels["type"].tolist() == [10 + i % 2 for i in range(8)]


@pytest.mark.parametrize(
    ("later", "message"),
    [
        ({"colour": 1, "kind": 0}, r"samples 4\.\.5 differ .*lack \['type'\] and add \['kind'\]"),
        ({"colour": 1}, r"samples 4\.\.5 differ .*lack \['type'\]"),
        ({"colour": 1, "type": 0, "brand": 2}, r"add \['brand'\]"),
        ({"colour": 1.5, "type": 0}, r"'colour' of samples 4\.\.5 holds float32 .* int64"),
        (3, r"label columns \['colour', 'type'\] but samples 4\.\.5 have one label tensor"),
    ],
)
def test_batches_with_other_label_columns_are_refused(
    frozen: FrozenBackbone, tmp_path: Path, later: Any, message: str
) -> None:
    data = items(6, lambda i: {"colour": i % 3, "type": i % 2} if i < 4 else later)
    path = tmp_path / "store"
    with pytest.raises(ValueError, match=message):
        extract_features(frozen, data, path=path, batch_size=2, progress=False)
    assert len(FeatureStore.open(path, allow_incomplete=True)) == 4  # the batches before


def test_float_labels_after_int_labels_are_refused_not_cut(frozen: FrozenBackbone) -> None:
    data = items(4, lambda i: i if i < 2 else i + 0.7)
    with pytest.raises(ValueError, match=r"float labels after int labels would be cut"):
        extract_features(frozen, data, batch_size=2, progress=False)


def test_batches_of_another_image_size_are_refused(frozen: FrozenBackbone, tmp_path: Path) -> None:
    small, large = Images(2, size=(28, 42)), Images(2, size=(28, 56))
    data = Samples(
        [(small.image(i), 0) for i in range(2)] + [(large.image(i), 0) for i in range(2)]
    )
    with pytest.raises(StoreMismatchError, match=r"samples 2\.\.3 are 28x56 images .* 28x42"):
        extract_features(frozen, data, path=tmp_path / "store", batch_size=2, progress=False)
    assert FeatureStore.open(tmp_path / "store", allow_incomplete=True).input_size == (28, 42)


def test_class_folders_keep_their_class_names(frozen: FrozenBackbone, tmp_path: Path) -> None:
    SyntheticVehicles(6, seed=0, size=(28, 42)).write_folder(tmp_path / "folder", label="body")
    folder = ImageFolderDataset(tmp_path / "folder", Preprocess(resize=(28, 42)))
    extract_features(frozen, Subset(folder, range(5)), path=tmp_path / "store", progress=False)
    store = FeatureStore.open(tmp_path / "store")
    assert store.class_names == {"label": BODY_TYPES}
    assert store.label_names == ("label",)
    assert store.label_columns is None  # one label tensor, as before
    _, labels = FeatureDataset(store, label="label")[1]
    assert labels.tolist() == [folder.targets[1]]
    assert torch.equal(store.labels(slice(None), column="label"), store.labels(slice(None)))


def test_dict_labels_keep_the_class_names_of_each_column(frozen: FrozenBackbone) -> None:
    vehicles = SyntheticVehicles(4, seed=0, size=(28, 42), num_brands=3)
    store = extract_features(frozen, vehicles, progress=False)
    assert store.class_names == vehicles.vocabularies
    assert store.label_columns == ["body", "colour", "orientation", "brand"]


def test_class_names_given_and_checked(frozen: FrozenBackbone) -> None:
    data = items(4, lambda i: i % 2)
    store = extract_features(
        frozen, data, class_names={"defect": ["ok", "scratch"]}, progress=False
    )
    assert store.class_names == {"defect": ("ok", "scratch")}
    assert store.label_names == ("defect",)
    _, labels = FeatureDataset(store, label="defect")[3]
    assert labels.tolist() == [1]
    with pytest.raises(ValueError, match=r"label 2 is out of range for 2 classes"):
        extract_features(
            frozen, items(4, lambda i: i % 3), class_names={"d": ["a", "b"]}, progress=False
        )
    with pytest.raises(ValueError, match="one label tensor"):
        extract_features(frozen, data, class_names={"a": ["x"], "b": ["y"]}, progress=False)
    with pytest.raises(ValueError, match=r"not label columns"):
        extract_features(
            frozen, Images(4, labels="columns"), class_names={"brand": ["x"]}, progress=False
        )
    # A missing label (-100) is not out of range.
    store = extract_features(
        frozen, items(2, lambda i: -100), class_names={"d": ["a"]}, progress=False
    )
    assert store.labels(slice(None)).tolist() == [-100, -100]
