from __future__ import annotations

import pytest
import torch

from dinov2_heads.labels import MISSING_LABEL, check_class_labels


def test_valid_labels_come_back_as_int64() -> None:
    labels = check_class_labels(torch.tensor([0, 2, MISSING_LABEL], dtype=torch.int32), 3)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 2, MISSING_LABEL]


def test_each_mistake_is_named() -> None:
    with pytest.raises(ValueError, match=r"label 3 is out of range for 3 classes \(valid: 0\.\.2"):
        check_class_labels(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"label -1 is out of range.*or -100 for a sample"):
        check_class_labels(torch.tensor([-1, 0]), 3)
    with pytest.raises(TypeError, match=r"integer class indices.*float32.*labels\.long\(\)"):
        check_class_labels(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(TypeError, match=r"got list"):
        check_class_labels([0, 1], 3)
    with pytest.raises(
        ValueError, match=r"expected labels of shape \(B,\) = \(2,\), got \(2, 3\)$"
    ):
        check_class_labels(torch.zeros(2, 3, dtype=torch.long), 3, batch=2)


def test_context_hints_and_the_missing_value() -> None:
    with pytest.raises(ValueError, match=r"^head 'x': label 7 .*or 255 for a sample"):
        check_class_labels(torch.tensor([7, 255]), 3, missing=255, context="head 'x': ")
    assert check_class_labels(torch.tensor([1, 255]), 3, missing=255).tolist() == [1, 255]
    with pytest.raises(ValueError, match=r"\(2, 3\); use multi-label$"):
        check_class_labels(torch.zeros(2, 3), 3, batch=2, shape_hint="use multi-label")
    with pytest.raises(TypeError, match=r"; use multi-label$"):
        check_class_labels(torch.zeros(2), 3, hint="use multi-label")


def test_negative_labels_may_all_mean_missing() -> None:
    labels = torch.tensor([0, -1, -7, MISSING_LABEL])
    assert check_class_labels(labels, 3, negative_is_missing=True).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="label -1 is out of range"):
        check_class_labels(labels, 3)
