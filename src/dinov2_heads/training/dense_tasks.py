"""Which dense task a head learns: a class per pixel (segmentation) or metres per pixel (depth).

``DENSE_TASKS`` is the registry: a new dense head type is its file, its line in
:data:`~dinov2_heads.heads.HEAD_TYPES` and one line here. :class:`~dinov2_heads.training.
DenseLoss` and :func:`~dinov2_heads.training.evaluate_dense` read a head's task from it, so
neither knows a head type by name.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from dinov2_heads.heads import registered_type_name

__all__ = ["DENSE_TASKS", "DenseTask", "dense_task", "require_dense_task"]

#: ``"segmentation"``: logits (B, K, h, w) against masks (B, H, W) of class indices (255 = no
#: label). ``"depth"``: metres (B, 1, h, w) against depth maps (B, 1, H, W) (0 = no depth).
DenseTask = Literal["segmentation", "depth"]

#: Registered head type name -> the dense task it learns.
DENSE_TASKS: dict[str, DenseTask] = {
    "LinearSegmentationHead": "segmentation",
    "LinearDepthHead": "depth",
    "DPTDepthHead": "depth",
}


def dense_task(head: nn.Module) -> DenseTask | None:
    """The task of ``head``'s registered type, or ``None`` for a classifier or another module."""
    name = registered_type_name(head)
    return DENSE_TASKS.get(name) if name is not None else None


def require_dense_task(head: nn.Module, name: str = "head") -> DenseTask:
    """:func:`dense_task`, or a ``ValueError`` naming the head types that have one."""
    task = dense_task(head)
    if task is None:
        known = ", ".join(sorted(DENSE_TASKS))
        raise ValueError(
            f"head {name!r} is a {type(head).__name__}, not a dense head ({known}); a head of "
            f"your own joins with DENSE_TASKS[{type(head).__name__!r}] = 'segmentation' (or "
            "'depth') once it is in HEAD_TYPES"
        )
    return task
