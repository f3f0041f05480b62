"""Stores written by earlier versions of the store format still open, read and resume.

``fixtures/store_v1_*`` were written by dinov2-heads 0.1.0.dev0 (store format version 1) with
``tiny_frozen()`` and ``Images``: a complete store of dict labels with patch tokens, and one
interrupted after 2 of its 5 samples.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_version_1_store_opens_and_reads(frozen: FrozenBackbone) -> None:
    data = Images(4, labels="columns")
    store = FeatureStore.open(
        FIXTURES / "store_v1_columns",
        backbone=frozen,
        input_size=(28, 42),
        preprocessing="resize 28x42",
    )
    assert len(store) == 4
    assert store.complete
    assert store.label_columns == ["colour", "type"]
    assert store.keep == ("class_tokens", "patch_mean", "patch_tokens")
    features = store.features(slice(None))
    live = frozen(torch.stack([data.image(i) for i in range(4)]))
    torch.testing.assert_close(features.class_token, live.class_token.half().float())
    assert features.patch_tokens is not None
    assert live.patch_tokens is not None
    torch.testing.assert_close(features.patch_tokens[-1], live.patch_tokens[-1].half().float())
    labels = store.labels(slice(None))
    assert isinstance(labels, dict)
    assert labels["colour"].tolist() == [0, 1, 2, 0]
    assert labels["type"].tolist() == [0, 1, 0, 1]
    assert torch.equal(store.sample_ids(), torch.arange(4))
    _, colour = FeatureDataset(store, label="colour")[2]
    assert colour.tolist() == [2]


def test_an_interrupted_version_1_store_resumes(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    shutil.copytree(FIXTURES / "store_v1_interrupted", path)
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert (len(partial), partial.complete) == (2, False)
    data = Images(5)
    store = extract_features(frozen, data, path=path, batch_size=2, progress=False)
    assert data.reads == [2, 3, 4]  # only the missing samples were read
    fresh = extract_features(frozen, Images(5), batch_size=2, progress=False)
    assert len(store) == 5
    for name in ("class_tokens", "patch_mean", "sample_ids", "labels"):
        assert torch.equal(store.array(name), fresh.array(name)), name
