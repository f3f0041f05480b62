"""The standard monocular depth metrics, per image and averaged, reducible across processes.

On each image's valid pixels (ground truth finite and within ``(min_depth, max_depth]``), with
the prediction clamped to ``[min_depth, max_depth]``:

- ``abs_rel`` = mean(|d - d*| / d*), ``sq_rel`` = mean((d - d*)^2 / d*);
- ``rmse`` = sqrt(mean((d - d*)^2)), ``rmse_log`` = sqrt(mean((ln d - ln d*)^2));
- ``log10`` = mean(|log10 d - log10 d*|);
- ``delta1``, ``delta2``, ``delta3``: the fraction of pixels with max(d / d*, d* / d) below
  1.25, 1.25^2 and 1.25^3;

where d is the prediction and d* the ground truth. Each metric is computed per image and then
averaged over images, as the official DINOv2 depth evaluation (and BTS, AdaBins) reports them.
With ``median_scaling`` each prediction is first multiplied by median(d*) / median(d) over its
valid pixels (the convention for models that do not know the scale).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dinov2_heads import distributed
from dinov2_heads.depth_range import check_depth_map, check_depth_range, valid_depth_mask

#: The metric names in report order; lower is better for the first five, higher for the deltas.
DEPTH_METRICS: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
)
#: The delta thresholds.
DELTA = 1.25


def _median(values: Tensor) -> Tensor:
    """The median as NumPy defines it: the mean of the two middle values of an even count."""
    ordered = values.sort().values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _per_image(pred: Tensor, target: Tensor, valid: Tensor, median_scaling: bool) -> Tensor:
    """(len(DEPTH_METRICS),) float64 metrics of one image's valid pixels (at least one)."""
    d_star = target[valid].double()
    d = pred[valid].double()
    if median_scaling:
        d = d * (_median(d_star) / _median(d))
    ratio = torch.maximum(d / d_star, d_star / d)
    log_diff = torch.log(d) - torch.log(d_star)
    return torch.stack(
        [
            ((d - d_star).abs() / d_star).mean(),
            ((d - d_star) ** 2 / d_star).mean(),
            ((d - d_star) ** 2).mean().sqrt(),
            (log_diff**2).mean().sqrt(),
            (torch.log10(d) - torch.log10(d_star)).abs().mean(),
            (ratio < DELTA).double().mean(),
            (ratio < DELTA**2).double().mean(),
            (ratio < DELTA**3).double().mean(),
        ]
    )


class DepthMetrics:
    """Streaming depth metrics: call :meth:`update` per batch, then :meth:`compute`.

    Args:
        min_depth: Ground truth at or below it is invalid; predictions are clamped up to it.
            The official NYU and KITTI evaluations use 0.001.
        max_depth: Ground truth above it is invalid; predictions are clamped down to it
            (NYU: 10, KITTI: 80). ``None``: no upper bound.
        median_scaling: Scale each prediction by median(ground truth) / median(prediction)
            first.

    Example:
        >>> metrics = DepthMetrics(max_depth=10.0)
        >>> metrics.update(torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 2.5))
        >>> round(metrics.compute()["abs_rel"], 3)
        0.2
    """

    def __init__(
        self,
        *,
        min_depth: float = 0.001,
        max_depth: float | None = None,
        median_scaling: bool = False,
    ) -> None:
        # Without an upper bound only min_depth is checked (against a bound just above it).
        upper = max_depth if max_depth is not None else min_depth + 1.0
        self.min_depth, upper = check_depth_range(min_depth, upper, who="DepthMetrics")
        self.max_depth = None if max_depth is None else upper
        self.median_scaling = bool(median_scaling)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.sums = torch.zeros(len(DEPTH_METRICS), dtype=torch.float64)
        self.count = 0
        self.skipped = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` (B, 1, H, W) or (B, H, W), in metres.

        Images without a valid ground-truth pixel are counted in :attr:`skipped` and left out.
        """
        if pred.ndim == 3:
            pred = pred[:, None]
        if target.ndim == 3:
            target = target[:, None]
        if pred.ndim != 4 or pred.shape[1] != 1 or pred.shape != target.shape:
            raise ValueError(
                f"DepthMetrics: expected a prediction and a ground truth of the same shape "
                f"(B, 1, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}; resize the "
                "prediction to the ground truth (Depther returns depth at the input size)"
            )
        check_depth_map(target, who="DepthMetrics")
        pred = pred.detach().float().clamp(min=self.min_depth, max=self.max_depth)
        valid = valid_depth_mask(target, min_depth=self.min_depth, max_depth=self.max_depth)
        for image in range(pred.shape[0]):
            if not bool(valid[image].any()):
                self.skipped += 1
                continue
            self.sums += _per_image(
                pred[image], target[image], valid[image], self.median_scaling
            ).cpu()
            self.count += 1

    def state(self) -> tuple[Tensor, int, int]:
        """(sums (len(DEPTH_METRICS),), images counted, images skipped), as :meth:`compute` sums."""
        return self.sums.clone(), self.count, self.skipped

    def compute(self, *, reduce: bool = True) -> dict[str, float]:
        """The mean of each metric over the images seen (by every process when ``reduce``).

        Under ``torchrun`` every process must call it (it gathers the others' sums); in a
        single process ``reduce`` changes nothing.

        Raises:
            ValueError: No image had a valid ground-truth pixel.
        """
        sums, count, skipped = self.state()
        if reduce and distributed.is_distributed():
            parts = distributed.gather_objects((sums, count, skipped))
            sums = torch.stack([p[0] for p in parts]).sum(0)
            count = sum(p[1] for p in parts)
            skipped = sum(p[2] for p in parts)
        if count == 0:
            raise ValueError(
                f"no image had a valid ground-truth depth ({skipped} skipped); check the depth "
                f"scale and the valid range ({self.min_depth}, {self.max_depth}]"
            )
        return {name: float(value) / count for name, value in zip(DEPTH_METRICS, sums, strict=True)}

    def merge(self, other: DepthMetrics) -> DepthMetrics:
        """Add another accumulator's images (same settings) into this one; returns ``self``."""
        if (other.min_depth, other.max_depth, other.median_scaling) != (
            self.min_depth,
            self.max_depth,
            self.median_scaling,
        ):
            raise ValueError("cannot merge DepthMetrics made with different settings")
        self.sums += other.sums
        self.count += other.count
        self.skipped += other.skipped
        return self


def depth_metrics(
    pred: Tensor,
    target: Tensor,
    *,
    min_depth: float = 0.001,
    max_depth: float | None = None,
    median_scaling: bool = False,
) -> dict[str, float]:
    """The metrics of one batch (see :class:`DepthMetrics`), averaged over its images."""
    metrics = DepthMetrics(min_depth=min_depth, max_depth=max_depth, median_scaling=median_scaling)
    metrics.update(pred, target)
    return metrics.compute(reduce=False)


def format_depth_metrics(values: Mapping[str, float]) -> str:
    """One line, for example ``abs_rel 0.112  sq_rel 0.071  rmse 0.402 ... delta3 0.993``."""
    return "  ".join(f"{name} {values[name]:.3f}" for name in DEPTH_METRICS if name in values)
