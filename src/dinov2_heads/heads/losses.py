"""Per-head losses for real labels: single- and multi-label heads, missing labels, weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.labels import MISSING_LABEL, check_class_labels

#: The default "label unknown" value (the library-wide missing label, as in
#: ``F.cross_entropy(ignore_index=-100)``).
IGNORE_INDEX = MISSING_LABEL


@dataclass(frozen=True)
class HeadLoss:
    """How one head's loss is computed.

    Attributes:
        multi_label: ``False``: one class per sample, cross-entropy on integer targets (B,).
            ``True``: any number of classes per sample, BCE-with-logits on 0/1 targets (B, K).
        weight: This head's weight in the total.
        label_smoothing: Cross-entropy label smoothing; for multi-label heads targets become
            ``t * (1 - s) + s / 2``.
        class_weights: K per-class weights (for imbalanced classes): the ``weight`` of
            ``F.cross_entropy``, or a per-class factor on the BCE terms.
    """

    multi_label: bool = False
    weight: float = 1.0
    label_smoothing: float = 0.0
    class_weights: Sequence[float] | Tensor | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"a head's loss weight must be finite and >= 0, got {self.weight}")
        if self.class_weights is not None:
            weights = torch.as_tensor(self.class_weights, dtype=torch.float32).flatten()
            bad = ~(torch.isfinite(weights) & (weights >= 0))
            if bool(bad.any()):
                index = int(bad.nonzero()[0])
                raise ValueError(
                    f"class_weights must be finite and >= 0, got {weights[index].item()} for "
                    f"class {index}; give each class a factor such as 1.0 (0 leaves a class "
                    "out of the loss)"
                )

    def _key(self) -> tuple[bool, float, float, tuple[float, ...] | None]:
        weights = self.class_weights
        if weights is not None:
            weights = tuple(torch.as_tensor(weights, dtype=torch.float64).flatten().tolist())
        return (self.multi_label, self.weight, self.label_smoothing, weights)

    # Class weights may be a tensor or a list: compare and hash them by value.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadLoss):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class LossOutput(NamedTuple):
    """The weighted total (a scalar to call ``backward`` on) and each head's unweighted loss."""

    total: Tensor
    per_head: dict[str, Tensor]


def head_loss(
    logits: Tensor,
    targets: Tensor,
    spec: HeadLoss | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    name: str = "head",
) -> Tensor:
    """One head's mean loss over the samples (or, multi-label, entries) whose label is known.

    Samples whose target is ``ignore_index`` drop out; when none is known the loss is a zero
    that still backpropagates (zero gradients), never NaN.

    Args:
        logits: (B, K).
        targets: Single-label: integer classes (B,). Multi-label: (B, K) of 0/1 (or
            probabilities), with ``ignore_index`` for unknown entries or whole rows.
        spec: Loss settings; ``HeadLoss()`` (plain cross-entropy) when ``None``.
        ignore_index: The "label unknown" value.
        name: The head's name, for error messages.

    Returns:
        A scalar.
    """
    spec = spec or HeadLoss()
    if logits.ndim != 2:
        raise ValueError(
            f"head {name!r}: expected logits of shape (B, K), got {tuple(logits.shape)}"
        )
    num_classes = logits.shape[1]
    logits = logits.float()
    class_weights = _class_weights(spec, num_classes, logits.device, name)
    if spec.multi_label:
        return _multi_label_loss(logits, targets, spec, class_weights, ignore_index, name)
    return _single_label_loss(logits, targets, spec, class_weights, ignore_index, name)


class MultiHeadLoss(nn.Module):
    """The loss of a :class:`~dinov2_heads.heads.MultiHead`: one term per head, weighted.

    Args:
        heads: Settings per head name; heads that are not listed get ``HeadLoss()``
            (single-label cross-entropy, weight 1).
        ignore_index: The "label unknown" target value.

    Example:
        >>> loss_fn = MultiHeadLoss({"colour": HeadLoss(multi_label=True, weight=0.5)})
        >>> logits = {"brand": torch.randn(4, 3), "colour": torch.randn(4, 2)}
        >>> targets = {"brand": torch.tensor([0, 2, -100, 1]),
        ...            "colour": torch.tensor([[1, 0], [0, 1], [1, 1], [-100, -100]])}
        >>> total, per_head = loss_fn(logits, targets)
        >>> sorted(per_head)
        ['brand', 'colour']
    """

    def __init__(
        self, heads: Mapping[str, HeadLoss] | None = None, *, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        heads = dict(heads or {})
        for name, spec in heads.items():
            if not isinstance(spec, HeadLoss):
                raise TypeError(
                    f"head {name!r}: expected a HeadLoss, got {type(spec).__name__}; "
                    "write HeadLoss(multi_label=..., weight=...)"
                )
        self.heads = heads
        self.ignore_index = ignore_index

    def forward(self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> LossOutput:
        """Total and per-head losses.

        Args:
            logits: ``{name: (B, K)}``, e.g. the output of a ``MultiHead``.
            targets: ``{name: targets}`` with the same names; use ``ignore_index`` for samples
                without that label rather than leaving the name out.
        """
        if not isinstance(logits, Mapping) or not isinstance(targets, Mapping):
            raise TypeError(
                "MultiHeadLoss takes {name: logits} and {name: targets} mappings, got "
                f"{type(logits).__name__} and {type(targets).__name__}"
            )
        _check_names(logits, targets, self.heads)
        per_head = {
            name: head_loss(
                value,
                targets[name],
                self.heads.get(name),
                ignore_index=self.ignore_index,
                name=name,
            )
            for name, value in logits.items()
        }
        total = sum(
            (self.heads.get(name, HeadLoss()).weight * loss for name, loss in per_head.items()),
            start=torch.zeros((), device=next(iter(per_head.values())).device),
        )
        return LossOutput(total, per_head)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, ignore_index={self.ignore_index}"


def _check_names(
    logits: Mapping[str, Tensor], targets: Mapping[str, Tensor], specs: Mapping[str, HeadLoss]
) -> None:
    if not logits:
        raise ValueError("MultiHeadLoss got no logits")
    heads = sorted(logits)
    for name in logits:
        if name not in targets:
            raise ValueError(
                f"head {name!r} has no targets (targets has {sorted(targets)}); give every head "
                f"a target, with {IGNORE_INDEX} for samples whose label is unknown"
            )
    for name in targets:
        if name not in logits:
            raise ValueError(f"targets for {name!r} match no head; the heads are {heads}")
    for name in specs:
        if name not in logits:
            raise ValueError(f"loss settings for {name!r} match no head; the heads are {heads}")


def _class_weights(
    spec: HeadLoss, num_classes: int, device: torch.device, name: str
) -> Tensor | None:
    if spec.class_weights is None:
        return None
    weights = torch.as_tensor(spec.class_weights, dtype=torch.float32, device=device)
    if weights.shape != (num_classes,):
        raise ValueError(
            f"head {name!r}: class_weights must have one value per class ({num_classes}), "
            f"got shape {tuple(weights.shape)}"
        )
    return weights


def _single_label_loss(
    logits: Tensor,
    targets: Tensor,
    spec: HeadLoss,
    class_weights: Tensor | None,
    ignore_index: int,
    name: str,
) -> Tensor:
    batch, num_classes = logits.shape
    multi_label = "for 0/1 targets per class use HeadLoss(multi_label=True)"
    targets = check_class_labels(
        targets,
        num_classes,
        batch=batch,
        missing=ignore_index,
        context=f"head {name!r}: ",
        hint=multi_label,
        shape_hint=multi_label,
    ).to(logits.device)
    known = targets != ignore_index
    summed = F.cross_entropy(
        logits,
        targets,
        weight=class_weights,
        ignore_index=ignore_index,
        label_smoothing=spec.label_smoothing,
        reduction="sum",
    )
    # The mean of F.cross_entropy divides by the summed weight of the known samples, which is
    # 0 when a batch has none: the sum is 0 then too, and the clamp keeps 0 / 0 from being NaN.
    if class_weights is None:
        denominator = known.sum().float()
    else:
        # Unknown targets (any ignore_index, 255 included) index class 0, then count for 0.
        denominator = (class_weights[torch.where(known, targets, 0)] * known).sum()
    return summed / denominator.clamp(min=torch.finfo(torch.float32).tiny)


def _multi_label_loss(
    logits: Tensor,
    targets: Tensor,
    spec: HeadLoss,
    class_weights: Tensor | None,
    ignore_index: int,
    name: str,
) -> Tensor:
    if not isinstance(targets, Tensor):
        raise TypeError(f"head {name!r}: targets must be a tensor, got {type(targets).__name__}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"head {name!r}: multi-label targets must have the logits' shape (B, K) = "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    targets = targets.to(logits.device)
    known = targets != ignore_index
    values = torch.where(known, targets, torch.zeros_like(targets)).float()
    out_of_range = known & ((values < 0) | (values > 1) | values.isnan())
    if bool(out_of_range.any()):
        bad = values[out_of_range][0].item()
        raise ValueError(
            f"head {name!r}: multi-label target {bad} is outside [0, 1] "
            f"(use 0/1 per class, or {ignore_index} for an unknown entry)"
        )
    if spec.label_smoothing:
        values = values * (1 - spec.label_smoothing) + spec.label_smoothing / 2
    terms = F.binary_cross_entropy_with_logits(logits, values, reduction="none")  # (B, K)
    if class_weights is not None:
        terms = terms * class_weights
    return (terms * known).sum() / known.sum().clamp(min=1)
