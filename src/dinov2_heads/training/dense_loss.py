"""``DenseLoss``: the loss of segmentation and depth heads trained together, one term per head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.dense.segmentation_loss import SegmentationLoss
from dinov2_heads.heads.depth_losses import DepthLoss
from dinov2_heads.heads.losses import LossOutput
from dinov2_heads.training.dense_tasks import require_dense_task

__all__ = ["DenseLoss", "dense_head_loss"]

#: The name a single head (not a ``MultiHead``) has in :class:`DenseLoss`'s ``per_head``.
SINGLE_HEAD = "head"


def dense_head_loss(head: nn.Module, name: str = "head", **options: Any) -> nn.Module:
    """The default loss of one dense head, with ``options`` passed to it.

    Segmentation heads: :class:`~dinov2_heads.dense.SegmentationLoss` (per-pixel
    cross-entropy, 255 ignored, the logits resized to the masks); ``options``: ``class_weights``.
    Depth heads: :class:`~dinov2_heads.heads.DepthLoss` with the head's ``max_depth`` (SigLoss
    with the official 100 warm-up steps + 0.5 x GradientLoss, the prediction resized to the
    target); ``options``: ``warm_up_steps``, ``sig_weight``, ``gradient_weight``, ``max_depth``.

    Raises:
        ValueError: ``head`` is not a dense head, or an option the loss does not take.
    """
    task = require_dense_task(head, name)
    if task == "segmentation":
        factory: type[nn.Module] = SegmentationLoss
        arguments: dict[str, Any] = dict(options)
    else:
        factory = DepthLoss
        arguments = {"max_depth": float(getattr(head, "max_depth")), **options}  # noqa: B009
    try:
        return factory(**arguments)
    except TypeError:
        import inspect

        accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ValueError(
            f"head {name!r}: the {task} loss ({factory.__name__}) takes {', '.join(accepted)}, "
            f"got {', '.join(sorted(options))}"
        ) from None


class DenseLoss(nn.Module):
    """One loss for dense heads: each head's own loss (:func:`dense_head_loss`), summed.

    ``DenseLoss(MultiHead({"parts": LinearSegmentationHead(...), "depth": LinearDepthHead(...)}))``
    takes the heads' outputs ``{"parts": (B, K, h, w), "depth": (B, 1, h', w')}`` and the
    targets (one tensor that every head learns, or ``{label: tensor}``) and returns
    :class:`~dinov2_heads.heads.LossOutput`: the weighted total and each head's loss.
    :func:`~dinov2_heads.training.train_one_epoch` trains on its ``total``.

    Args:
        heads: A :class:`~dinov2_heads.heads.MultiHead` (or mapping of names to heads) of dense
            heads, or one dense head (its output and its loss are then named ``"head"``).
        losses: Per head name, a loss module used instead of the default, such as
            ``SegmentationLoss(class_weights=...)`` or ``DepthLoss(warm_up_steps=0)``.
        labels: Per head name, the key of dict targets it learns (default: its own name).
        weights: Per head name, its factor in the total (default 1).

    Raises:
        ValueError: A head that is not a dense head, or a loss, label or weight for a name that
            is not a head.
    """

    def __init__(
        self,
        heads: nn.Module | Mapping[str, nn.Module],
        *,
        losses: Mapping[str, nn.Module] | None = None,
        labels: Mapping[str, str] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        members: dict[str, nn.Module]
        if isinstance(heads, Mapping | nn.ModuleDict):
            members = dict(heads.items())
        else:
            members = {SINGLE_HEAD: heads}
        for what, given in (("losses", losses), ("labels", labels), ("weights", weights)):
            unknown = sorted(set(given or {}) - set(members))
            if unknown:
                raise ValueError(
                    f"DenseLoss: {what} for {unknown} match no head; the heads are "
                    f"{sorted(members)}"
                )
        chosen = dict(losses or {})
        self.losses = nn.ModuleDict(
            {name: chosen.get(name) or dense_head_loss(h, name) for name, h in members.items()}
        )
        self.labels = dict(labels or {})
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in members}

    def forward(
        self, outputs: Mapping[str, Tensor] | Tensor, targets: Tensor | Mapping[str, Tensor]
    ) -> LossOutput:
        """The total and per-head losses of ``outputs`` against ``targets``.

        Args:
            outputs: ``{name: output}`` of the heads (a tensor for a single head).
            targets: Masks (B, H, W) or depth maps (B, 1, H, W) that every head learns, or a
                dict of them by label name.
        """
        if isinstance(outputs, Tensor):
            outputs = {SINGLE_HEAD: outputs}
        missing = sorted(set(self.losses) - set(outputs))
        if missing:
            raise ValueError(f"DenseLoss: no output for the heads {missing}; got {sorted(outputs)}")
        per_head: dict[str, Tensor] = {}
        for name, loss_fn in self.losses.items():
            target = targets
            if isinstance(targets, Mapping):
                key = self.labels.get(name, name)
                if key not in targets:
                    raise ValueError(
                        f"DenseLoss: head {name!r} learns the label {key!r}, which the targets "
                        f"lack; they hold {sorted(targets)} (pass labels={{{name!r}: ...}})"
                    )
                target = targets[key]
            value = loss_fn(outputs[name], target)
            # DepthLoss gives (total, sig, gradient); the segmentation loss is the scalar itself.
            total = getattr(value, "total", value)
            per_head[name] = total
        first = next(iter(per_head.values()))
        total = sum(
            (self.weights[name] * loss for name, loss in per_head.items()),
            start=torch.zeros((), device=first.device, dtype=first.dtype),
        )
        return LossOutput(total, per_head)
