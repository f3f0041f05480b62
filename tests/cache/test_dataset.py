"""FeatureDataset and collate_features: the cache looks like an image dataset to a loop."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_heads.cache import FeatureDataset, FeatureStore, collate_features, extract_features
from dinov2_heads.cache.store import StoreMismatchError
from dinov2_heads.features import Features, FrozenBackbone
from tests.cache.conftest import Images


@pytest.fixture(scope="module")
def store(frozen: FrozenBackbone, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    path = tmp_path_factory.mktemp("dataset") / "store"
    return extract_features(
        frozen, Images(10, labels="columns"), path=path, keep="patch_tokens", progress=False
    )


def test_items_have_a_batch_dimension_of_one(store: FeatureStore) -> None:
    features, labels = FeatureDataset(store)[4]
    assert isinstance(features, Features)
    assert features.batch_size == 1
    assert features.class_token.dtype == torch.float32
    assert torch.equal(features.class_token, store.features(4).class_token)
    assert labels == {"colour": torch.tensor([1]), "type": torch.tensor([0])}
    assert FeatureDataset(store)[-1][0].batch_size == 1
    with pytest.raises(IndexError):
        FeatureDataset(store)[10]


def test_batched_reads_equal_item_by_item_collation(store: FeatureStore) -> None:
    dataset = FeatureDataset(store, label="colour", return_ids=True)
    indices = [7, 2, 5]
    (batched,) = dataset.__getitems__(indices)
    one_by_one = collate_features([dataset[i] for i in indices])
    for a, b in zip(batched, one_by_one, strict=True):
        if isinstance(a, Features):
            assert torch.equal(a.patch_mean, b.patch_mean)
            assert a.patch_tokens is not None
            assert b.patch_tokens is not None
            assert torch.equal(a.patch_tokens[-1], b.patch_tokens[-1])
        else:
            assert torch.equal(a, b)
    features, labels, ids = batched
    assert torch.equal(ids, torch.tensor(indices))
    assert torch.equal(labels, torch.tensor(indices) % 3)
    assert features.batch_size == 3


def test_loader_visits_every_sample_once(store: FeatureStore) -> None:
    loader = FeatureDataset(store, label="type", return_ids=True).loader(4, shuffle=True, seed=0)
    seen = []
    for features, labels, ids in loader:
        assert features.batch_size == labels.shape[0] == ids.shape[0]
        assert torch.equal(labels, ids % 2)
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(10))
    assert seen != list(range(10))


def test_worker_processes_reopen_the_memory_maps(store: FeatureStore) -> None:
    copy = pickle.loads(pickle.dumps(store))
    assert copy._mapped == {}
    assert torch.equal(copy.features([1, 2]).patch_mean, store.features([1, 2]).patch_mean)
    loader = DataLoader(
        FeatureDataset(store, label="colour"),
        batch_size=5,
        num_workers=1,
        collate_fn=collate_features,
    )
    features, labels = next(iter(loader))
    assert torch.equal(features.class_token, store.features(slice(0, 5)).class_token)
    assert labels.tolist() == [0, 1, 2, 0, 1]


def test_head_inputs_are_checked(store: FeatureStore) -> None:
    assert FeatureDataset(store, n_blocks=1)[0][0].n_blocks == 1
    with pytest.raises(StoreMismatchError, match="last 4 blocks but the feature store"):
        FeatureDataset(store, n_blocks=4)
    with pytest.raises(ValueError, match="not a label of the store"):
        FeatureDataset(store, label="brand")
    with pytest.raises(TypeError, match="FeatureStore"):
        FeatureDataset("store")  # type: ignore[arg-type]


def test_to_memory_and_repr(store: FeatureStore) -> None:
    memory = store.to_memory()
    assert memory.path is None
    assert torch.equal(memory.array("patch_tokens"), store.array("patch_tokens"))
    assert "10 samples" in repr(store)
    assert "memory" in repr(memory)


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate_features([])
    with pytest.raises(TypeError, match="default_collate"):
        collate_features([("a", 1), ("b", 2)])


def test_store_without_manifest_entries_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a valid feature store manifest"):
        FeatureStore.open(tmp_path)


def test_store_indexing_is_checked_and_masks_select(store: FeatureStore) -> None:
    for index in (10, -11):
        with pytest.raises(IndexError, match="out of range for 10 samples"):
            store.features(index)
        with pytest.raises(IndexError, match="out of range for 10 samples"):
            store.labels(index)
    assert torch.equal(store.features(-10).class_token, store.features(0).class_token)
    colour = store.labels(slice(None), column="colour")
    assert isinstance(colour, torch.Tensor)
    mask = colour == 2
    assert torch.equal(store.sample_ids(mask), torch.tensor([2, 5, 8]))
    assert torch.equal(store.features(mask).class_token, store.features([2, 5, 8]).class_token)
    assert store.sample_ids(mask.tolist()).tolist() == [2, 5, 8]
    with pytest.raises(IndexError, match="mask of 3 values for 10 samples"):
        store.features(torch.tensor([True, False, True]))
