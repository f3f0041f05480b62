"""When a fast module may compute its fast way, and when it must do what the plain module does.

The fast modules ask on each call, so that one swapped model runs on any device and under any
transform: the fast computations run on a GPU, eagerly; on CPU, while ``torch.compile``,
``torch.export`` or ``torch.jit.trace`` traces the model, and where a hook or a replaced
submodule must be honoured, the fast module computes exactly what the plain one does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from dinov2_heads.backbone.tracing import is_exporting, is_tracing

#: Device types on which the fast modules take their fast computations; the tests add "cpu"
#: to check the arithmetic there.
FAST_DEVICE_TYPES = frozenset({"cuda"})


def on_fast_device(x: Tensor) -> bool:
    """Whether ``x`` lives on a device the fast computations are for (CUDA)."""
    return x.device.type in FAST_DEVICE_TYPES


def runs_fast(x: Tensor) -> bool:
    """Whether a fast module takes its fast computation for ``x``: a GPU, not tracing."""
    return on_fast_device(x) and not is_tracing()


def captured_by_compile() -> bool:
    """True while ``torch.compile`` traces the model into a graph (``torch.export`` excluded)."""
    return torch.compiler.is_compiling() and not is_exporting()


def needs_grad(*tensors: Tensor | None) -> bool:
    """True when autograd records operations on any of ``tensors``.

    The kernels without a backward (Triton's, cuBLASLt's GELU epilogue) step aside then, so
    fine-tuning an accelerated model gets the plain model's gradients.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def plain_tensors(*tensors: Tensor | None) -> bool:
    """False when any tensor is wrapped by a ``torch.func`` transform (vmap, grad, jvp).

    Such tensors have no storage a Triton kernel could read; PyTorch's operations handle them.
    """
    return not any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def bypassable(module: nn.Module, *kinds: type[nn.Module]) -> bool:
    """Whether a fast module may compute ``module``'s output from its parameters, uncalled.

    Only for a module of exactly one of ``kinds`` with no hooks, its own or global: a subclass
    or a wrapper (LoRA, quantisation) may compute something else, and a hook must see the
    output. Any other module is called as the plain model calls it.
    """
    return (
        type(module) in kinds
        and not (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or module._backward_pre_hooks
        )
        and not (
            _module._global_forward_hooks
            or _module._global_forward_pre_hooks
            or _module._global_backward_hooks
            or _module._global_backward_pre_hooks
        )
    )
