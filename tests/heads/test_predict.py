from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead, predict, predict_logits
from tests.heads.conftest import random_features


def test_single_label_indices_probabilities_and_names() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 2.5]])
    pred = predict_logits(logits, class_names=["cat", "dog", "fox"], top_k=2)
    assert pred.indices.tolist() == [[1, 2], [2, 0]]
    assert torch.allclose(pred.probabilities, logits.softmax(-1))
    assert torch.allclose(pred.scores, logits.softmax(-1).topk(2).values)
    assert pred.names == [["dog", "fox"], ["fox", "cat"]]
    assert pred.index.tolist() == [1, 2]
    assert pred.label == ["dog", "fox"]
    assert pred.positives is None


def test_multi_label_uses_sigmoid_and_threshold() -> None:
    logits = torch.tensor([[2.0, -2.0, 0.5], [-3.0, -1.0, -0.5]])
    pred = predict_logits(logits, multi_label=True, threshold=0.6)
    assert torch.allclose(pred.probabilities, logits.sigmoid())
    assert pred.positives is not None
    assert pred.positives.tolist() == [[True, False, True], [False, False, False]]
    assert pred.positive_names(["a", "b", "c"]) == [["a", "c"], []]
    assert pred.names is None


def test_predict_uses_the_heads_names_and_eval_mode() -> None:
    torch.manual_seed(0)
    neck = Conv1dNeck((2, 3), 8, 3, class_names=["x", "y", "z"]).train()
    features = random_features(dim=8)
    first = predict(neck, features)
    assert neck.training  # the mode is restored
    second = predict(neck, features)
    assert not isinstance(first, dict)
    assert not isinstance(second, dict)
    assert torch.equal(first.probabilities, second.probabilities)  # dropout was off
    assert not first.probabilities.requires_grad
    assert first.label is not None
    assert set(first.label) <= {"x", "y", "z"}
    with torch.no_grad():
        expected = neck.eval()(features).softmax(-1)
    assert torch.allclose(first.probabilities, expected)


def test_predict_multi_head() -> None:
    multi = MultiHead(
        {"brand": LinearHead(8, 3, class_names=["a", "b", "c"]), "tags": LinearHead(8, 4)}
    )
    preds = predict(multi, random_features(dim=8), top_k=2, multi_label=["tags"])
    assert isinstance(preds, dict)
    assert preds["brand"].names is not None
    assert preds["brand"].indices.shape == (4, 2)
    assert preds["tags"].positives is not None
    assert preds["tags"].names is None
    override = predict(multi, random_features(dim=8), class_names={"tags": list("pqrs")})
    assert isinstance(override, dict)
    assert override["tags"].names is not None


def test_predict_from_images_through_a_sequential() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    pred = predict(model, torch.randn(2, 3, 2, 2), class_names=["a", "b", "c"])
    assert not isinstance(pred, dict)
    assert pred.label is not None
    assert len(pred.label) == 2


def test_errors() -> None:
    with pytest.raises(ValueError, match="top_k must be between 1 and K = 3"):
        predict_logits(torch.zeros(2, 3), top_k=4)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        predict_logits(torch.zeros(2, 3), class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"expected logits \(B, K\)"):
        predict_logits(torch.zeros(3))
    with pytest.raises(ValueError, match="positive_names is for multi-label"):
        predict_logits(torch.zeros(2, 3)).positive_names(["a", "b", "c"])
    multi = MultiHead({"brand": LinearHead(8, 3)})
    with pytest.raises(ValueError, match=r"multi_label names \['colour'\] match no head"):
        predict(multi, random_features(dim=8), multi_label=["colour"])
    for names in ("brand", ["brand"]):
        # One logits tensor has no head names: refused rather than read as softmax.
        with pytest.raises(TypeError, match="pass multi_label=True or False"):
            predict(LinearHead(8, 3), random_features(dim=8), multi_label=names)


@pytest.mark.parametrize("threshold", [2.0, -0.1, 1.0001, float("nan"), float("inf")])
def test_threshold_outside_zero_one_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
        predict_logits(torch.zeros(2, 3), multi_label=True, threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
        predict(LinearHead(8, 3), random_features(dim=8), multi_label=True, threshold=threshold)


def test_threshold_edges_and_type() -> None:
    logits = torch.tensor([[-30.0, 0.0, 30.0]])
    assert predict_logits(logits, multi_label=True, threshold=0).positives.tolist() == [  # type: ignore[union-attr]
        [True, True, True]
    ]
    assert predict_logits(logits, multi_label=True, threshold=1).positives.tolist() == [  # type: ignore[union-attr]
        [False, False, True]
    ]
    with pytest.raises(TypeError, match=r"threshold must be a number"):
        predict_logits(logits, multi_label=True, threshold="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_refused_instead_of_naming_a_class(value: float) -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [value, 1.0, 2.0]])
    with pytest.raises(ValueError, match=r"head 'head' gave NaN or infinite logits for samples 1"):
        predict_logits(logits, class_names=["a", "b", "c"])
    pred = predict_logits(logits, check_finite=False)
    assert pred.indices.shape == (2, 1)
    # A head whose weights hold NaN: the features are fine, the logits are not.
    head = LinearHead(8, 3, class_names=["a", "b", "c"])
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"gave NaN or infinite logits"):
        predict(head, random_features(dim=8))
    multi = MultiHead({"brand": head})
    with pytest.raises(ValueError, match=r"head 'brand' gave NaN"):
        predict(multi, random_features(dim=8))
    assert isinstance(predict(multi, random_features(dim=8), check_finite=False), dict)
