"""KnnClassifier against the official scoring, chunked against whole, ties, stores, errors."""

from __future__ import annotations

import pytest
import torch

from dinov2_heads.cache import FeatureStore
from dinov2_heads.features import Features
from dinov2_heads.neighbors import KnnClassifier, chunked_topk
from tests.neighbors.reference import official_knn_proba

KS = (1, 5, 20)


def data(seed: int = 0, m: int = 400, d: int = 24, classes: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    labels = torch.randint(0, classes, (m,), generator=g)
    train = centres[labels] + torch.randn(m, d, generator=g)
    q_labels = torch.randint(0, classes, (50,), generator=g)
    queries = centres[q_labels] + torch.randn(50, d, generator=g)
    return train, labels, queries, q_labels


def test_matches_the_official_scoring() -> None:
    train, labels, queries, _ = data()
    knn = KnnClassifier(train, labels, k=KS, temperature=0.07)
    ours = knn.predict_proba(queries)
    theirs = official_knn_proba(train, labels, queries, KS, 0.07, knn.num_classes)
    assert set(ours) == set(KS)
    for k in KS:
        assert ours[k].shape == (50, 6)
        torch.testing.assert_close(ours[k], theirs[k].float(), rtol=0, atol=1e-5)
    # The scores of max(k) are the whole softmax: they sum to one.
    torch.testing.assert_close(ours[20].sum(dim=1), torch.ones(50))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 399, 400, 10_000])
def test_chunked_equals_whole(chunk_size: int) -> None:
    train, labels, queries, _ = data(1)
    whole = KnnClassifier(train, labels, k=KS)
    chunked = KnnClassifier(train, labels, k=KS, chunk_size=chunk_size)
    # The same neighbours; similarities differ only by the matrix product's rounding, which
    # depends on how many rows are multiplied at once.
    assert torch.equal(whole.neighbors(queries).indices, chunked.neighbors(queries).indices)
    for k in KS:
        torch.testing.assert_close(
            whole.predict_proba(queries)[k], chunked.predict_proba(queries)[k], rtol=0, atol=1e-6
        )


def test_ties_are_broken_by_the_lower_training_index() -> None:
    # Six copies of one vector with different labels: exactly tied similarities across chunks
    # (a unit vector, so every dot product with it is exact whatever the summation order).
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(1, 8)
    base[0, 0] = 1.0
    train = torch.cat(
        [torch.randn(10, 8, generator=g), base.repeat(6, 1), torch.randn(10, 8, generator=g)]
    )
    labels = torch.tensor([0] * 10 + [1, 2, 3, 4, 5, 6] + [0] * 10)
    query = base.clone()
    results = [
        KnnClassifier(train, labels, k=(3,), chunk_size=c).neighbors(query) for c in (1, 4, 5, 26)
    ]
    for result in results:
        assert result.indices.tolist() == [[10, 11, 12]]
        torch.testing.assert_close(result.values, results[0].values, rtol=0, atol=1e-6)
    scores = KnnClassifier(train, labels, k=(3,), chunk_size=4).predict_proba(query)[3]
    assert scores[0, 1:4].gt(0).all()
    assert scores[0, 4:].eq(0).all()


def test_ties_inside_one_chunk_beyond_k() -> None:
    # More tied rows than k inside one chunk: the lowest indices win, not torch.topk's choice.
    rows = torch.ones(50, 4)
    best = chunked_topk(torch.ones(1, 4), iter([(0, rows)]), 5)
    assert best.indices.tolist() == [list(range(5))]


def test_empty_classes_and_num_classes() -> None:
    train, labels, queries, _ = data(2, classes=3)
    knn = KnnClassifier(train, labels, k=(5,), num_classes=8)
    scores = knn.predict_proba(queries)[5]
    assert scores.shape == (50, 8)
    assert scores[:, 3:].eq(0).all()
    with pytest.raises(ValueError, match="num_classes"):
        KnnClassifier(train, labels, num_classes=2, k=(5,))


def test_k_larger_than_the_training_set_is_a_clear_error() -> None:
    train, labels, _, _ = data(m=30)
    with pytest.raises(ValueError, match="larger than the training set"):
        KnnClassifier(train, labels, k=(10, 31))
    with pytest.raises(ValueError, match="positive int"):
        KnnClassifier(train, labels, k=(0,))
    with pytest.raises(ValueError, match="labels of shape"):
        KnnClassifier(train, labels[:-1], k=(1,))
    with pytest.raises(TypeError, match="integer class indices"):
        KnnClassifier(train, labels.float(), k=(1,))
    knn = KnnClassifier(train, labels, k=(1, 5))
    with pytest.raises(ValueError, match="was not scored"):
        knn.predict(train[:2], k=3)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        knn.predict_proba(train[0])


def features_of(vectors: torch.Tensor) -> Features:
    b, d = vectors.shape
    patches = torch.randn(b, 4, d)
    return Features.from_tokens([vectors], [patches], (2, 2))


def test_from_a_feature_store_matches_tensors_and_reads_its_labels() -> None:
    train, labels, queries, q_labels = data(3)
    store = FeatureStore.from_features(features_of(train), labels)
    from_store = KnnClassifier(store, k=KS, chunk_size=33)
    from_tensor = KnnClassifier(train, labels, k=KS)
    for k in KS:
        torch.testing.assert_close(
            from_store.predict_proba(queries)[k],
            from_tensor.predict_proba(queries)[k],
            rtol=0,
            atol=1e-6,
        )
    # Features as queries use the same pooling (class token by default).
    assert torch.equal(from_store.predict(features_of(queries)), from_tensor.predict(queries))
    result = from_store.evaluate(queries, q_labels)
    assert set(result.top1) == set(KS)
    assert result.top1[20] > 80.0  # well-separated clusters
    assert all(result.top5[k] >= result.top1[k] for k in KS)
    assert "top-1" in result.table()


def test_other_poolings() -> None:
    train, labels, queries, _ = data(4)
    features = features_of(train)
    query_features = features_of(queries)
    knn = KnnClassifier(features, labels, k=(5,), pooling="patch_mean")
    reference = KnnClassifier(features.patch_mean, labels, k=(5,))
    assert torch.equal(
        knn.predict_proba(query_features)[5], reference.predict_proba(query_features.patch_mean)[5]
    )
    both = KnnClassifier(features, labels, k=(5,), pooling="class+patch_mean")
    joined = torch.cat([features.class_token, features.patch_mean], dim=1)
    assert torch.equal(
        both.neighbors(query_features).indices,
        KnnClassifier(joined, labels, k=(5,))
        .neighbors(torch.cat([queries, query_features.patch_mean], dim=1))
        .indices,
    )
    with pytest.raises(ValueError, match="pooling"):
        KnnClassifier(features, labels, pooling="max")


def test_evaluate_counts_top1_and_top5_by_hand() -> None:
    train = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3])
    knn = KnnClassifier(train, labels, k=(1,))
    result = knn.evaluate(torch.eye(4), torch.tensor([0, 1, 3, 3]))
    assert result.top1 == {1: 75.0}
    assert result.top5 == {1: 100.0}


def test_labels_without_a_class_are_refused() -> None:
    train, labels, _, _ = data(5, m=40)
    labels = labels.clone()
    labels[3] = -100
    with pytest.raises(ValueError, match="no label"):
        KnnClassifier(train, labels, k=(1,))
    labels[3] = -2
    with pytest.raises(ValueError, match="out of range"):
        KnnClassifier(train, labels, k=(1,))
