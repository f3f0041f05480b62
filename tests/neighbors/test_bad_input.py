"""The heads without training refuse bad input with a clear error instead of a torch stack
trace or a silently wrong answer: NaN features, mismatched widths, non-integer k, empty sets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dinov2_heads.neighbors import (
    KnnClassifier,
    NearestNeighbors,
    chunked_topk,
    fit_logistic,
    logistic_regression,
)


def data(count: int = 20, width: int = 8) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(count, width, generator=generator)
    return features, torch.arange(count) % 3


def with_nan(features: Tensor, row: int = 3) -> Tensor:
    broken = features.clone()
    broken[row, 2] = float("nan")
    return broken


def logistic(features: Tensor, labels: Tensor, **options: object) -> object:
    return logistic_regression(features, labels, c_values=[1.0], progress=False, **options)


NAN_CASES: dict[str, Callable[[Tensor, Tensor], object]] = {
    "knn bank": lambda x, y: KnnClassifier(with_nan(x), y, k=3),
    "knn query": lambda x, y: KnnClassifier(x, y, k=3).predict(with_nan(x)),
    "search bank": lambda x, y: NearestNeighbors(with_nan(x)),
    "search query": lambda x, y: NearestNeighbors(x).search(with_nan(x), k=2),
    "logistic": lambda x, y: logistic(with_nan(x), y),
    "fit_logistic": lambda x, y: fit_logistic(with_nan(x), y, 1.0),
}


@pytest.mark.parametrize("case", NAN_CASES)
def test_nan_features_are_named_by_row(case: str) -> None:
    features, labels = data()
    with pytest.raises(ValueError, match=r"hold NaN or inf in 1 of 20 rows \(3\); drop those"):
        NAN_CASES[case](features, labels)


def test_nan_features_used_to_give_an_answer_without_a_sign() -> None:
    # What the check prevents: a NaN query still got a class.
    features, labels = data()
    knn = KnnClassifier(features, labels, k=3)
    query = torch.full((1, 8), float("nan"))
    with pytest.raises(ValueError, match="query features hold NaN"):
        knn.predict(query)
    assert knn.predict(features[:2]).tolist() == labels[:2].tolist()


def test_queries_of_another_width_or_dtype() -> None:
    features, labels = data()
    knn = KnnClassifier(features, labels, k=3)
    with pytest.raises(ValueError, match=r"query features of shape \(B, 8\) like the training"):
        knn.predict(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"query features of shape \(B, D\), got \(8,\)"):
        knn.predict(features[0])
    with pytest.raises(TypeError, match=r"query features must be floating point, got torch\.int64"):
        knn.predict(features[:2].long())
    with pytest.raises(ValueError, match=r"like the training features, got \(4, 5\)"):
        knn.evaluate(torch.randn(4, 5), labels[:4])
    # Half-precision queries are fine: they are compared in float32.
    assert torch.equal(knn.predict(features[:4].half()), knn.predict(features[:4]))


def test_a_three_d_training_set_names_its_shape_not_the_labels() -> None:
    features, labels = data()
    with pytest.raises(ValueError, match=r"expected features of shape \(M, D\), got \(1, 20, 8\)"):
        KnnClassifier(features[None], labels, k=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k": 2.0}, "k must be a positive int or a sequence of them, got 2.0"),
        ({"k": 3, "chunk_size": 2.5}, "chunk_size must be a positive int or None, got 2.5"),
    ],
)
def test_knn_options_that_are_not_ints(options: dict[str, object], message: str) -> None:
    features, labels = data()
    with pytest.raises(ValueError, match=message):
        KnnClassifier(features, labels, **options)  # type: ignore[arg-type]


def test_evaluate_needs_a_positive_batch_size() -> None:
    features, labels = data()
    knn = KnnClassifier(features, labels, k=3)
    with pytest.raises(ValueError, match="batch or chunk size must be a positive int, got 0"):
        knn.evaluate(features, labels, batch_size=0)


def test_logistic_regression_bad_input() -> None:
    features, labels = data()
    with pytest.raises(ValueError, match="nothing to fit: the training features hold no samples"):
        logistic(features[:0], labels[:0])
    with pytest.raises(ValueError, match=r"held-out or test features of shape \(M, 8\)"):
        logistic(features, labels, val_features=torch.randn(5, 4), val_labels=labels[:5])
    with pytest.raises(ValueError, match=r"held-out or test features of shape \(M, 8\)"):
        logistic(features, labels, test_features=torch.randn(5, 4), test_labels=labels[:5])
    with pytest.raises(ValueError, match=r"num_classes must be an int of at least .* = 3, got 1"):
        logistic(features, labels, num_classes=1)
    with pytest.raises(ValueError, match="c_values must be positive numbers, got '1'"):
        logistic_regression(features, labels, c_values="1", progress=False)


def test_fit_logistic_checks_its_labels() -> None:
    features, labels = data()
    with pytest.raises(ValueError, match=r"expected labels of shape \(20,\) for 20 samples"):
        fit_logistic(features, labels[:4], 1.0)
    # Fractional labels used to be truncated to classes without a word.
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        fit_logistic(features, labels.float() + 0.5, 1.0)
    with pytest.raises(ValueError, match="num_classes must be an int of at least"):
        fit_logistic(features, labels, 1.0, num_classes=2)
    with pytest.raises(ValueError, match="nothing to fit"):
        fit_logistic(features[:0], labels[:0], 1.0)
    with pytest.raises(ValueError, match=r"got \(8,\); .*for one sample use x.unsqueeze\(0\)"):
        fit_logistic(features[0], labels, 1.0)
    weight, bias = fit_logistic(features, labels, 1.0)
    assert weight.shape == (3, 8)
    assert bias.shape == (3,)


def test_chunked_topk_bad_input() -> None:
    queries, rows = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        chunked_topk(queries, iter([(0, rows)]), 0)
    with pytest.raises(ValueError, match=r"expected queries of shape \(Q, D\), got \(8,\)"):
        chunked_topk(queries[0], iter([(0, rows)]), 2)
    with pytest.raises(ValueError, match=r"expected rows of shape \(C, 8\) like the queries"):
        chunked_topk(queries, iter([(0, rows[:, :4])]), 2)
    with pytest.raises(
        TypeError, match=r"the rows are torch\.float32 but the queries torch\.float64"
    ):
        chunked_topk(queries.double(), iter([(0, rows)]), 2)
    best = chunked_topk(queries, iter([(0, rows[:3]), (3, rows[3:])]), 2)
    assert torch.equal(best.indices, (queries @ rows.T).topk(2).indices)
