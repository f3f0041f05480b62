"""Pooled vectors of a feature store are read without its patch tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import DamagedStoreError, FeatureStore, extract_features
from dinov2_heads.neighbors import KnnClassifier
from dinov2_heads.neighbors.pooling import POOLINGS, as_matrix, iter_rows, pool
from dinov2_heads.neighbors.search import source_fingerprint
from tests.cache.conftest import Images, tiny_frozen


@pytest.mark.parametrize("pooling", POOLINGS)
def test_a_store_is_pooled_without_reading_its_patch_tokens(pooling: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    extract_features(tiny_frozen(), Images(9), path=path, keep="patch_tokens", progress=False)
    store = FeatureStore.open(path)
    expected = pool(store.to_memory().features(slice(None)), pooling)
    fingerprint = source_fingerprint(store.to_memory(), pooling)
    (path / "patch_tokens.bin").write_bytes(b"")  # cut under the open store
    with pytest.raises(DamagedStoreError):
        store.features(0)
    assert torch.equal(as_matrix(store, pooling), expected)
    chunks = list(iter_rows(store, 4, pooling))
    assert [offset for offset, _ in chunks] == [0, 4, 8]
    assert torch.equal(torch.cat([rows for _, rows in chunks]), expected)
    assert source_fingerprint(store, pooling) == fingerprint
    knn = KnnClassifier(store, k=(3,), pooling=pooling)
    assert knn.evaluate(store, batch_size=4).count == 9
