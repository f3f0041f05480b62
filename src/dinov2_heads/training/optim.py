"""``GridSGD``: SGD with momentum where every head of a batched parameter has its own lr."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["GridSGD"]


class GridSGD(Optimizer):
    """SGD with momentum for parameters that stack many heads along their first dimension.

    A parameter of shape (L, ...) holds L heads; head ``l`` is updated exactly as
    ``torch.optim.SGD`` would update it alone with learning rate ``lr * head_lr[l]``:

    ``buf = momentum * buf + (grad + weight_decay * p)`` (``buf = grad`` on the first step),
    then ``p -= lr * head_lr[l] * buf``.

    ``lr`` is the schedule factor (1.0 at the start), so any ``torch.optim.lr_scheduler``
    works on it: ``CosineAnnealingLR(optimizer, T_max=steps)`` anneals every head's lr
    together, as the official linear evaluation does.

    Args:
        params: Parameter groups, each a dict with ``"params"`` (tensors whose first dimension
            is L) and ``"head_lr"`` (a 1-D tensor of L learning rates).
        lr: Initial schedule factor.
        momentum: Momentum factor.
        weight_decay: L2 penalty added to the gradient (0 in the official recipe).
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        *,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}"
            )
        groups = list(params)
        for group in groups:
            head_lr = group.get("head_lr")
            if not isinstance(head_lr, Tensor) or head_lr.ndim != 1:
                raise ValueError("each GridSGD parameter group needs a 1-D 'head_lr' tensor")
            for param in group["params"]:
                if param.ndim == 0 or param.shape[0] != head_lr.shape[0]:
                    raise ValueError(
                        f"a parameter of shape {tuple(param.shape)} does not stack "
                        f"{head_lr.shape[0]} heads along its first dimension"
                    )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every head; ``closure`` re-evaluates the loss as in ``torch.optim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            factor = float(group["lr"])
            momentum = float(group["momentum"])
            weight_decay = float(group["weight_decay"])
            head_lr: Tensor = group["head_lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if weight_decay:
                    grad = grad.add(param, alpha=weight_decay)
                if momentum:
                    state = self.state[param]
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buffer.mul_(momentum).add_(grad)
                    grad = buffer
                # (L,) -> (L, 1, ...) so each head's slice gets its own learning rate.
                scale = (head_lr * factor).to(device=param.device, dtype=param.dtype)
                scale = scale.view(-1, *([1] * (param.ndim - 1)))
                param.addcmul_(grad, scale, value=-1.0)
        return loss
