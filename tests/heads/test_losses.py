from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.heads import HeadLoss, MultiHeadLoss, head_loss


def logits(batch: int = 6, classes: int = 4, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=gen).requires_grad_(True)


LABELS = torch.tensor([0, 3, -100, 1, 2, -100])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_single_label_matches_cross_entropy_mean(smoothing: float, weighted: bool) -> None:
    x = logits()
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0]) if weighted else None
    spec = HeadLoss(label_smoothing=smoothing, class_weights=weights)
    expected = F.cross_entropy(x, LABELS, weight=weights, label_smoothing=smoothing)
    assert torch.allclose(head_loss(x, LABELS, spec), expected, atol=1e-6)


def test_a_batch_without_any_label_gives_zero_not_nan() -> None:
    x = logits()
    unknown = torch.full((6,), -100)
    for spec in (HeadLoss(), HeadLoss(class_weights=[1.0, 2.0, 3.0, 4.0], label_smoothing=0.1)):
        loss = head_loss(x, unknown, spec)
        assert loss.item() == 0.0
        loss.backward()
        assert x.grad is not None
        assert torch.equal(x.grad, torch.zeros_like(x))
    multi = head_loss(x, torch.full((6, 4), -100), HeadLoss(multi_label=True))
    assert multi.item() == 0.0
    assert torch.isfinite(multi)


def test_multi_label_mean_over_known_entries() -> None:
    x = logits()
    targets = torch.randint(0, 2, (6, 4))
    targets[2] = -100  # a sample without these labels
    targets[0, 1] = -100  # one unknown entry
    known = targets != -100
    expected = F.binary_cross_entropy_with_logits(x[known], targets[known].float())
    got = head_loss(x, targets, HeadLoss(multi_label=True))
    assert torch.allclose(got, expected, atol=1e-6)

    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    smoothed = targets.float() * 0.8 + 0.1
    terms = F.binary_cross_entropy_with_logits(x, smoothed, reduction="none") * weights
    expected = terms[known].mean()
    spec = HeadLoss(multi_label=True, label_smoothing=0.2, class_weights=weights)
    assert torch.allclose(head_loss(x, targets, spec), expected, atol=1e-6)


def test_multi_head_total_and_per_head() -> None:
    loss_fn = MultiHeadLoss({"colour": HeadLoss(multi_label=True, weight=0.5)})
    outputs = {"brand": logits(seed=1), "colour": logits(seed=2)}
    targets = {"brand": LABELS, "colour": torch.randint(0, 2, (6, 4))}
    total, per_head = loss_fn(outputs, targets)
    assert list(per_head) == ["brand", "colour"]
    assert torch.allclose(per_head["brand"], F.cross_entropy(outputs["brand"], LABELS))
    assert torch.allclose(total, per_head["brand"] + 0.5 * per_head["colour"])
    total.backward()
    assert outputs["brand"].grad is not None
    assert outputs["colour"].grad is not None


def test_bfloat16_logits_give_a_float32_loss() -> None:
    loss = head_loss(logits().to(torch.bfloat16), LABELS)
    assert loss.dtype == torch.float32


def test_errors_name_the_head() -> None:
    loss_fn = MultiHeadLoss()
    x = {"brand": logits()}
    with pytest.raises(ValueError, match=r"head 'brand': label 7 is out of range for 4 classes"):
        loss_fn(x, {"brand": torch.tensor([0, 7, 1, 1, 1, 1])})
    with pytest.raises(ValueError, match=r"head 'brand': label -1 is out of range"):
        loss_fn(x, {"brand": torch.tensor([0, -1, 1, 1, 1, 1])})
    with pytest.raises(ValueError, match=r"head 'brand' has no targets.*-100"):
        loss_fn(x, {"colour": LABELS})
    with pytest.raises(ValueError, match=r"targets for 'colr' match no head"):
        loss_fn(x, {"brand": LABELS, "colr": LABELS})
    with pytest.raises(ValueError, match=r"settings for 'colour' match no head"):
        MultiHeadLoss({"colour": HeadLoss()})(x, {"brand": LABELS})
    with pytest.raises(ValueError, match=r"'brand': expected labels of shape \(B,\) = \(6,\)"):
        loss_fn(x, {"brand": LABELS[:, None]})
    with pytest.raises(TypeError, match=r"head 'brand'.*integer class indices.*multi_label=True"):
        loss_fn(x, {"brand": LABELS.float()})
    multi = MultiHeadLoss({"brand": HeadLoss(multi_label=True)})
    with pytest.raises(ValueError, match=r"head 'brand': multi-label targets must have.*\(6, 4\)"):
        multi(x, {"brand": LABELS})
    with pytest.raises(ValueError, match=r"head 'brand': multi-label target 2.0 is outside"):
        multi(x, {"brand": torch.full((6, 4), 2)})
    with pytest.raises(ValueError, match=r"head 'brand': class_weights must have one value"):
        MultiHeadLoss({"brand": HeadLoss(class_weights=[1.0, 2.0])})(x, {"brand": LABELS})
    with pytest.raises(ValueError, match=r"head 'brand': expected logits of shape \(B, K\)"):
        loss_fn({"brand": torch.zeros(6)}, {"brand": LABELS})
    with pytest.raises(TypeError, match="HeadLoss"):
        MultiHeadLoss({"brand": 0.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="label_smoothing"):
        HeadLoss(label_smoothing=1.0)


def test_class_weights_with_an_ignore_index_beyond_the_classes() -> None:
    # 255 as "unknown" (segmentation style) is not a class, so it indexes no class weight.
    x = logits()
    labels = torch.where(LABELS == -100, 255, LABELS)
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for smoothing in (0.0, 0.2):
        spec = HeadLoss(class_weights=weights, label_smoothing=smoothing)
        loss_fn = MultiHeadLoss({"brand": spec}, ignore_index=255)
        expected = F.cross_entropy(
            x, labels, weight=weights, ignore_index=255, label_smoothing=smoothing
        )
        assert torch.allclose(loss_fn({"brand": x}, {"brand": labels}).total, expected)


def test_weights_that_are_not_finite_and_non_negative_are_refused() -> None:
    for weight in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match=rf"loss weight must be finite and >= 0, got {weight}"):
            HeadLoss(weight=weight)
    for bad in ([1.0, float("nan")], [1.0, float("inf")], torch.tensor([1.0, -0.5])):
        with pytest.raises(ValueError, match=r"class_weights must be finite and >= 0"):
            HeadLoss(class_weights=bad)


def test_nan_multi_label_targets_are_refused() -> None:
    targets = torch.tensor([[1.0, 0.0, float("nan"), 1.0]]).expand(6, 4)
    with pytest.raises(ValueError, match=r"head 'colour': multi-label target nan is outside"):
        head_loss(logits(), targets, HeadLoss(multi_label=True), name="colour")


def test_head_loss_specs_compare_and_hash_by_value() -> None:
    # Tensor or list class weights used to make == raise ("Boolean value of Tensor ... is
    # ambiguous") and hash() raise ("unhashable type: 'list'").
    a = HeadLoss(class_weights=torch.tensor([1.0, 2.0]))
    b = HeadLoss(class_weights=[1.0, 2.0])
    assert a == b
    assert hash(a) == hash(b)
    assert a != HeadLoss(class_weights=[1.0, 3.0])
    assert a != HeadLoss()
    assert HeadLoss(multi_label=True) != HeadLoss()
    assert len({a, b, HeadLoss()}) == 2
    assert HeadLoss() != "HeadLoss()"
