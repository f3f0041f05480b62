"""The Triton norm kernels as ``torch.library`` custom operators, which ``torch.compile`` keeps.

Eagerly, the fast modules launch the kernels of :mod:`dinov2_heads.accel.norm_kernels` straight
from Python. ``torch.compile`` cannot put such a launch into a graph, so by default the fast
modules compute the plain way while it traces them and Inductor generates its own LayerNorm.
Registered as operators, the kernels go into the captured graph as one node each (no graph
break); their fake implementations give the output shapes while tracing, and the compiled code
calls them. :func:`register` registers them once, importing Triton then (importing the library
never does); :func:`~dinov2_heads.accel.accelerate` with ``compiled_kernels=True`` calls it and
lets the fast modules put them into graphs:

- ``torch.ops.dinov2_heads.layer_norm(x, weight, bias, eps)``: LayerNorm over the last
  dimension, (..., D) -> (..., D);
- ``torch.ops.dinov2_heads.add_scaled(x, branch, gamma)``: ``x + gamma * branch`` rounded once
  (``x + branch`` when ``gamma`` is None);
- ``torch.ops.dinov2_heads.add_scaled_layer_norm(x, branch, gamma, weight, bias, eps)``: that
  sum and its LayerNorm, as a pair.

They are opaque operators (``torch.library.custom_op``): Inductor calls them as they are.
``torch.library.triton_op`` would let Inductor read the Triton source, but its kernels cannot be
traced under Triton's CPU interpreter, where the tests check these operators. They have no
backward and no ``torch.func`` rules: the fast modules put them into a graph only where autograd
records nothing, and never into ``torch.export`` or ``torch.jit.trace`` graphs (an exported
model stays free of them).
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import torch
from torch import Tensor, nn

from dinov2_heads.accel import norm_kernels
from dinov2_heads.accel.conditions import captured_by_compile, on_fast_device

logger = logging.getLogger(__name__)

#: The operators' namespace: ``torch.ops.dinov2_heads``.
NAMESPACE = "dinov2_heads"
#: Device types of the tensors the operators may be put into graphs for, set by
#: :func:`register`: CUDA, and the CPU under Triton's interpreter (``TRITON_INTERPRET=1``).
GRAPH_DEVICE_TYPES: frozenset[str] = frozenset()

_registered = False


def register() -> str | None:
    """Register the three operators (once); returns None, or why they cannot be registered.

    The reason is a sentence for a log line: Triton not installed, or not importable, or a
    torch without ``torch.library.custom_op`` (before 2.4).
    """
    global GRAPH_DEVICE_TYPES, _registered
    if _registered:
        return None
    if not norm_kernels.triton_installed():
        return "Triton is not installed"
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} has no torch.library.custom_op (2.4 or later has)"
    try:
        import dinov2_heads.accel.triton_norm  # noqa: F401  (imports Triton)
    except Exception as error:  # a broken Triton install: any import failure
        return f"Triton does not import ({type(error).__name__}: {error})"
    _define()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    GRAPH_DEVICE_TYPES = frozenset({"cuda", "cpu"} if interpreted else {"cuda"})
    _registered = True
    logger.debug("registered the torch.ops.%s norm operators", NAMESPACE)
    return None


def in_graph(x: Tensor) -> bool:
    """Whether the operators go into the graph being captured for ``x`` now.

    True while ``torch.compile`` (not ``torch.export``) traces a tensor of a device the kernels
    run on, once :func:`register` has succeeded. Readable by Dynamo without a graph break.
    """
    return on_fast_device(x) and x.device.type in GRAPH_DEVICE_TYPES and captured_by_compile()


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(x)`` by the operator: (..., D) -> (..., D)."""
    return cast(Tensor, _ops().layer_norm(x, norm.weight, norm.bias, norm.eps))


def add_scaled(x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
    """``x + gamma * branch`` (``x + branch`` without gamma) by the operator."""
    return cast(Tensor, _ops().add_scaled(x, branch, gamma))


def add_scaled_layer_norm(
    x: Tensor, branch: Tensor, gamma: Tensor | None, norm: nn.LayerNorm
) -> tuple[Tensor, Tensor]:
    """``(s, norm(s))`` with ``s = x + gamma * branch``, by the operator."""
    total, normed = _ops().add_scaled_layer_norm(x, branch, gamma, norm.weight, norm.bias, norm.eps)
    return total, normed


def _ops() -> Any:
    return getattr(torch.ops, NAMESPACE)


def _define() -> None:
    # The implementations launch the kernel as the eager fast modules do; the fake ones say
    # what comes out (fresh contiguous tensors of the input's shape) without computing it.
    def fresh(x: Tensor) -> Tensor:
        return x.new_empty(x.shape)

    @torch.library.custom_op(
        f"{NAMESPACE}::layer_norm",
        mutates_args=(),
        schema="(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor",
    )
    def layer_norm_op(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        return norm_kernels.launch_parts(x, None, None, (weight, bias, eps))[1]

    @layer_norm_op.register_fake
    def _(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        return fresh(x)

    @torch.library.custom_op(
        f"{NAMESPACE}::add_scaled",
        mutates_args=(),
        schema="(Tensor x, Tensor branch, Tensor? gamma) -> Tensor",
    )
    def add_scaled_op(x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
        return norm_kernels.launch_parts(x, branch, gamma, None)[0]

    @add_scaled_op.register_fake
    def _(x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
        return fresh(x)

    @torch.library.custom_op(
        f"{NAMESPACE}::add_scaled_layer_norm",
        mutates_args=(),
        schema="(Tensor x, Tensor branch, Tensor? gamma, Tensor weight, Tensor bias, float eps) "
        "-> (Tensor, Tensor)",
    )
    def add_scaled_layer_norm_op(
        x: Tensor, branch: Tensor, gamma: Tensor | None, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        return norm_kernels.launch_parts(x, branch, gamma, (weight, bias, eps))

    @add_scaled_layer_norm_op.register_fake
    def _(
        x: Tensor, branch: Tensor, gamma: Tensor | None, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        return fresh(x), fresh(x)
