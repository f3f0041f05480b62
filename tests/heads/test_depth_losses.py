from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.heads.depth_losses import DepthLoss, GradientLoss, SigLoss


def official_sigloss(pred: Tensor, target: Tensor, max_depth: float | None = None) -> Tensor:
    """dinov2/eval/depth/models/losses/sigloss.py, valid_mask=True, no warm-up."""
    valid_mask = target > 0
    if max_depth is not None:
        valid_mask = torch.logical_and(target > 0, target <= max_depth)
    pred, target = pred[valid_mask], target[valid_mask]
    g = torch.log(pred + 0.001) - torch.log(target + 0.001)
    dg = torch.var(g) + 0.15 * torch.pow(torch.mean(g), 2)
    return torch.sqrt(dg)


def official_gradientloss(pred: Tensor, target: Tensor, max_depth: float | None = None) -> Tensor:
    """dinov2/eval/depth/models/losses/gradientloss.py on one (H, W) map, valid_mask=True."""
    preds = [pred] + [pred[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    targets = [target] + [target[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    loss = torch.zeros(())
    for p, t in zip(preds, targets, strict=True):
        mask = t > 0
        if max_depth is not None:
            mask = torch.logical_and(t > 0, t <= max_depth)
        n = torch.sum(mask)
        d = torch.mul(torch.log(p + 0.001) - torch.log(t + 0.001), mask)
        v = torch.mul(torch.abs(d[0:-2, :] - d[2:, :]), torch.mul(mask[0:-2, :], mask[2:, :]))
        h = torch.mul(torch.abs(d[:, 0:-2] - d[:, 2:]), torch.mul(mask[:, 0:-2], mask[:, 2:]))
        loss = loss + (torch.sum(h) + torch.sum(v)) / n
    return loss


def depth_pair(
    batch: int = 3, size: tuple[int, int] = (17, 23), seed: int = 0
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 1, *size, generator=gen) * 9 + 0.5
    target[torch.rand(target.shape, generator=gen) < 0.2] = 0.0  # missing measurements
    pred = target.clamp(min=0.5) * torch.exp(0.3 * torch.randn(target.shape, generator=gen))
    return pred, target


@pytest.mark.parametrize("max_depth", [None, 6.0])
def test_sigloss_equals_the_official(max_depth: float | None) -> None:
    pred, target = depth_pair()
    loss = SigLoss(max_depth=max_depth)
    got = loss(pred, target)
    assert got.shape == ()
    assert torch.allclose(got, official_sigloss(pred, target, max_depth), rtol=1e-5)
    # (B, H, W) maps are accepted as well.
    assert torch.allclose(loss(pred[:, 0], target[:, 0]), got)


def test_sigloss_is_scale_invariant_up_to_its_mean_term() -> None:
    _, target = depth_pair()
    exact = SigLoss()(target.clamp(min=1.0), target.clamp(min=1.0))
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    # A constant factor only moves mean(g): var(g) stays, so the loss is sqrt(0.15) |log k|.
    scaled = SigLoss()(2.0 * target.clamp(min=1.0), target.clamp(min=1.0))
    assert float(scaled) == pytest.approx(
        0.15**0.5 * abs(float(torch.log(torch.tensor(2.0)))), rel=1e-3
    )


def test_sigloss_warm_up_counts_training_calls_only() -> None:
    pred, target = depth_pair()
    loss = SigLoss(warm_up_steps=2, weight=2.0)
    g = torch.log(pred[target > 0] + 0.001) - torch.log(target[target > 0] + 0.001)
    warm = 2.0 * torch.sqrt(0.15 * g.mean() ** 2)
    full = 2.0 * official_sigloss(pred, target)
    loss.eval()
    assert torch.allclose(loss(pred, target), full)
    assert loss.steps == 0
    loss.train()
    assert torch.allclose(loss(pred, target), warm)
    assert torch.allclose(loss(pred, target), warm)
    assert torch.allclose(loss(pred, target), full, rtol=1e-5)
    assert loss.steps == 3


@pytest.mark.parametrize("max_depth", [None, 6.0])
def test_gradient_loss_is_the_official_per_image_averaged(max_depth: float | None) -> None:
    pred, target = depth_pair()
    got = GradientLoss(max_depth=max_depth, weight=0.5)(pred, target)
    expected = torch.stack(
        [official_gradientloss(p[0], t[0], max_depth) for p, t in zip(pred, target, strict=True)]
    ).mean()
    assert torch.allclose(got, 0.5 * expected, rtol=1e-5)


def test_losses_ignore_invalid_pixels_and_survive_empty_masks() -> None:
    pred, target = depth_pair()
    noisy = pred.clone()
    noisy[target == 0] = 1000.0  # wild predictions where nothing was measured
    for loss in (SigLoss(), GradientLoss()):
        assert torch.allclose(loss(noisy, target), loss(pred, target))
    # NaN and infinite targets are invalid too.
    marked = target.clone()
    marked[target == 0] = float("nan")
    marked[0, 0, 0, 0] = float("inf")
    plain = target.clone()
    plain[0, 0, 0, 0] = 0.0
    assert torch.allclose(SigLoss()(pred, marked), SigLoss()(pred, plain))
    assert torch.allclose(GradientLoss()(pred, marked), GradientLoss()(pred, plain))
    # Nothing measured: a zero that backpropagates.
    pred.requires_grad_(True)
    empty = torch.zeros_like(target)
    for loss in (SigLoss(), GradientLoss(), DepthLoss()):
        value = loss(pred, empty)
        value = value.total if isinstance(value, tuple) else value
        assert float(value.detach()) == 0.0
        value.backward()
        assert pred.grad is not None
        assert torch.isfinite(pred.grad).all()


def test_depth_loss_resizes_the_prediction_and_sums_the_terms() -> None:
    pred, target = depth_pair(size=(16, 24))
    small = F.interpolate(pred, size=(4, 6), mode="bilinear", align_corners=False)
    small.requires_grad_(True)
    loss = DepthLoss(warm_up_steps=0)
    out = loss(small, target)
    resized = F.interpolate(small, size=(16, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(out.sig, official_sigloss(resized, target))
    assert torch.allclose(out.gradient, GradientLoss(weight=0.5)(resized, target))
    assert torch.allclose(out.total, out.sig + out.gradient)
    out.total.backward()
    assert small.grad is not None
    assert small.grad.abs().sum() > 0
    no_gradient = DepthLoss(gradient_weight=0.0, warm_up_steps=0)(small, target)
    assert float(no_gradient.gradient) == 0.0
    assert torch.allclose(no_gradient.total, out.sig)


def test_bad_inputs_are_refused() -> None:
    pred, target = depth_pair()
    with pytest.raises(ValueError, match="differ in size"):
        SigLoss()(pred, target[..., :-1])
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\) or \(B, H, W\)"):
        GradientLoss()(pred.expand(-1, 2, -1, -1), target.expand(-1, 2, -1, -1))
    negative = target.clone()
    negative[0, 0, 1, 1] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        SigLoss()(pred, negative)
    with pytest.raises(TypeError, match="floating point metres"):
        SigLoss()(pred, (target * 1000).to(torch.int32))
    with pytest.raises(ValueError, match="same batch"):
        DepthLoss()(pred[:2], target)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        SigLoss(weight=-1.0)
    with pytest.raises(ValueError, match="warm_up_steps"):
        SigLoss(warm_up_steps=-1)
    with pytest.raises(ValueError, match="finite number"):
        GradientLoss(max_depth=float("nan"))
