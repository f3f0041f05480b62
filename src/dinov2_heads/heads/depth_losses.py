"""The official depth losses: the scale-invariant log loss (SigLoss) and the gradient loss.

Both follow ``dinov2/eval/depth/models/losses`` (SigLoss after AdaBins, GradientLoss after
MegaDepth), with their constants: ``eps = 0.001`` inside the logarithms and the variance focus
0.15. The linear-probe configurations built on that code train with
``SigLoss(warm_up=True) + 0.5 * GradientLoss``, which :class:`DepthLoss` gives by default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.depth_range import check_depth_map, valid_depth_mask

#: Added to prediction and target inside the logarithms ("avoid grad explode").
EPS = 0.001
#: The weight of the squared mean log difference in SigLoss (the official 0.15).
VARIANCE_FOCUS = 0.15
#: The official gradient loss compares every pixel with the one two pixels away.
GRADIENT_STEP = 2


def _as_maps(pred: Tensor, target: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """Both as (B, 1, H, W); (B, H, W) gains the channel; any other shape is refused."""
    maps = []
    for name, value in (("prediction", pred), ("target", target)):
        if value.ndim == 3:
            value = value[:, None]
        if value.ndim != 4 or value.shape[1] != 1:
            raise ValueError(
                f"{who}: expected a {name} depth map of shape (B, 1, H, W) or (B, H, W), got "
                f"{tuple(value.shape)}"
            )
        maps.append(value)
    if maps[0].shape != maps[1].shape:
        raise ValueError(
            f"{who}: the prediction {tuple(maps[0].shape)} and the target "
            f"{tuple(maps[1].shape)} differ in size; resize the prediction to the target first "
            "(DepthLoss does) or load depth maps of the image's size"
        )
    check_depth_map(maps[1], who=who)
    return maps[0].float(), maps[1].float()


def _check_weight(value: float, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value}")
    return float(value)


class SigLoss(nn.Module):
    """The scale-invariant log loss of the official DINOv2 depth training.

    On the valid pixels of the whole batch (target > 0, finite, and at most ``max_depth`` when
    given), with ``g = log(pred + 0.001) - log(target + 0.001)``:
    ``loss = weight * sqrt(var(g) + 0.15 * mean(g) ** 2)`` (``var`` unbiased, as ``torch.var``).
    During the first ``warm_up_steps`` calls in training mode the loss is
    ``weight * sqrt(0.15 * mean(g) ** 2)``, the official warm-up (100 steps when switched on).
    Without a valid pixel the loss is a zero that still backpropagates.

    Args:
        max_depth: Targets above it are invalid; ``None`` keeps every positive target.
        weight: Factor on the loss.
        warm_up_steps: Training calls that use the warm-up loss (the official ``warm_iter``
            when ``warm_up=True``, 100).
    """

    def __init__(
        self, *, max_depth: float | None = None, weight: float = 1.0, warm_up_steps: int = 0
    ) -> None:
        super().__init__()
        if max_depth is not None:
            _check_weight(max_depth, "max_depth", "SigLoss")
        if (
            isinstance(warm_up_steps, bool)
            or not isinstance(warm_up_steps, int)
            or (warm_up_steps < 0)
        ):
            raise ValueError(f"SigLoss: warm_up_steps must be an int >= 0, got {warm_up_steps!r}")
        self.max_depth = max_depth
        self.weight = _check_weight(weight, "weight", "SigLoss")
        self.warm_up_steps = warm_up_steps
        self.steps = 0

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """A scalar from ``pred`` and ``target`` (B, 1, H, W) or (B, H, W) in metres."""
        pred, target = _as_maps(pred, target, "SigLoss")
        valid = valid_depth_mask(target, max_depth=self.max_depth)
        g = torch.log(pred[valid] + EPS) - torch.log(target[valid] + EPS)
        warming = self.training and self.steps < self.warm_up_steps
        if self.training:
            self.steps += 1
        if g.numel() == 0:
            return pred.sum() * 0.0
        focus = VARIANCE_FOCUS * g.mean() ** 2
        if warming:
            return self.weight * torch.sqrt(focus)
        variance = g.var() if g.numel() > 1 else g.sum() * 0.0
        return self.weight * torch.sqrt(variance + focus)

    def extra_repr(self) -> str:
        return (
            f"max_depth={self.max_depth}, weight={self.weight}, warm_up_steps={self.warm_up_steps}"
        )


class GradientLoss(nn.Module):
    """The multi-scale log-gradient loss of the official DINOv2 depth training.

    For each image and each of four scales (the map itself and every 2nd, 4th and 6th pixel
    in both directions, the official ``[:: 2 * i, :: 2 * i]``), with the masked log difference
    ``d = (log(pred + 0.001) - log(target + 0.001)) * valid``:
    ``(sum |d[y] - d[y + 2]| + sum |d[x] - d[x + 2]|) / N`` over pairs that are both valid,
    N being the valid pixels at that scale; the scales are summed, the images averaged, and
    the result multiplied by ``weight``.

    The official code indexes the first two dimensions of what it is given, which is right
    for one (H, W) map; on a (B, 1, H, W) batch it would take differences across images. This
    module applies the official computation to each image's map and averages over the batch.

    Args:
        max_depth: Targets above it are invalid; ``None`` keeps every positive target.
        weight: Factor on the loss.
    """

    #: The subsampling steps of the four scales.
    strides: tuple[int, ...] = (1, 2, 4, 6)

    def __init__(self, *, max_depth: float | None = None, weight: float = 1.0) -> None:
        super().__init__()
        if max_depth is not None:
            _check_weight(max_depth, "max_depth", "GradientLoss")
        self.max_depth = max_depth
        self.weight = _check_weight(weight, "weight", "GradientLoss")

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """A scalar from ``pred`` and ``target`` (B, 1, H, W) or (B, H, W) in metres."""
        pred, target = _as_maps(pred, target, "GradientLoss")
        total = pred.new_zeros(pred.shape[0])
        for stride in self.strides:
            p, t = pred[..., ::stride, ::stride], target[..., ::stride, ::stride]
            valid = valid_depth_mask(t, max_depth=self.max_depth)
            diff = torch.where(valid, torch.log(p + EPS) - torch.log(t.clamp(min=0) + EPS), 0.0)
            mask = valid.to(diff.dtype)
            k = GRADIENT_STEP
            vertical = (
                (diff[..., :-k, :] - diff[..., k:, :]).abs() * mask[..., :-k, :] * mask[..., k:, :]
            )
            horizontal = (diff[..., :-k] - diff[..., k:]).abs() * mask[..., :-k] * mask[..., k:]
            count = mask.flatten(1).sum(dim=1).clamp(min=1)
            total = total + (vertical.flatten(1).sum(1) + horizontal.flatten(1).sum(1)) / count
        return self.weight * total.mean()

    def extra_repr(self) -> str:
        return f"max_depth={self.max_depth}, weight={self.weight}"


class DepthLossOutput(NamedTuple):
    """The weighted total (a scalar to call ``backward`` on) and its two weighted terms."""

    total: Tensor
    sig: Tensor
    gradient: Tensor


class DepthLoss(nn.Module):
    """``SigLoss + gradient_weight * GradientLoss`` on a prediction resized to the target.

    The prediction (a head's output on its own grid, for example 4x the patch grid) is
    resized bilinearly (``align_corners=False``) to the target's size first, as the official
    decode head's ``losses`` does.

    Args:
        max_depth: Targets above it are invalid in both terms.
        sig_weight: Weight of :class:`SigLoss`.
        gradient_weight: Weight of :class:`GradientLoss` (the official configurations: 0.5;
            0 leaves it out).
        warm_up_steps: :class:`SigLoss` warm-up (the official configurations: 100).
    """

    def __init__(
        self,
        *,
        max_depth: float | None = None,
        sig_weight: float = 1.0,
        gradient_weight: float = 0.5,
        warm_up_steps: int = 100,
    ) -> None:
        super().__init__()
        self.sig = SigLoss(max_depth=max_depth, weight=sig_weight, warm_up_steps=warm_up_steps)
        self.gradient = GradientLoss(max_depth=max_depth, weight=gradient_weight)

    def forward(self, pred: Tensor, target: Tensor) -> DepthLossOutput:
        """Losses of ``pred`` (B, 1, h, w) against ``target`` (B, 1, H, W) or (B, H, W)."""
        if target.ndim == 3:
            target = target[:, None]
        if pred.ndim != 4 or target.ndim != 4 or pred.shape[0] != target.shape[0]:
            raise ValueError(
                f"DepthLoss: expected a prediction (B, 1, h, w) and a target (B, 1, H, W) of "
                f"the same batch, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(
                pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        sig = self.sig(pred, target)
        gradient = self.gradient(pred, target) if self.gradient.weight > 0 else sig.new_zeros(())
        return DepthLossOutput(sig + gradient, sig, gradient)
