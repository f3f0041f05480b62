"""The GPU fast path of the uncompiled forward pass, and the switch that turns it off.

On CUDA, outside ``torch.compile`` and ``torch.export``, the layers replace a few PyTorch
kernels that profiling showed to be slow for this model by faster equivalents:

- the patch embedding runs as one matrix product over the cut-out patches instead of a strided
  convolution (cuDNN's default choice for a 14x14 stride-14 kernel took 9% of ViT-S's time);
- the position table is resized with two small resampling matrices instead of the bicubic
  kernel, which runs one thread per output pixel and took 5% of ViT-L's time;
- LayerNorm, and LayerScale + the residual addition (fused with the next LayerNorm), are
  Triton kernels (:mod:`dinov2_heads.layers.norm_kernels`, with PyTorch fallbacks);
- with bf16 or fp16 weights, the first MLP layer, its bias and its GELU are one cuBLASLt call.
  That GELU is the tanh approximation (at most 5e-4 from the exact one, below bf16's and fp16's
  rounding): the only change here that is not exact in real arithmetic.

The kernels without a backward (Triton's, the GELU epilogue) run only where autograd records
nothing, as under ``torch.no_grad()`` (which ``FrozenBackbone`` uses); training through the
backbone gets PyTorch's operations there, and the same gradients as the plain path.

A module the fast path would compute without calling it (the patch convolution, a LayerNorm,
LayerScale, the first MLP layer and its GELU) is called as usual when it carries hooks or is
of another class (a subclass, a LoRA or quantised wrapper, another activation).

CPU runs, float32 MLPs, compiled graphs and exported graphs keep the plain kernels, so the CPU
path stays bit-for-bit what it was. :func:`plain_kernels` turns the fast path off, to compare
or to get the exact GELU in reduced precision.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

_state = threading.local()


def is_exporting() -> bool:
    """True inside ``torch.export`` (and so ONNX export); False where torch cannot tell."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(exporting()) if exporting is not None else False


def is_tracing() -> bool:
    """True while ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` traces the model."""
    return torch.compiler.is_compiling() or is_exporting() or _jit_tracing()


def _jit_tracing() -> bool:
    # torch.jit.is_tracing without its untyped wrapper.
    return torch._C._get_tracing_state() is not None


#: Device types that take the fast path; the tests add "cpu" to check its numbers there.
FAST_DEVICE_TYPES = frozenset({"cuda"})


def fast_path(x: Tensor) -> bool:
    """Whether the layers take the GPU fast path for ``x``: CUDA, eager, not switched off."""
    return (
        x.device.type in FAST_DEVICE_TYPES and getattr(_state, "enabled", True) and not is_tracing()
    )


def needs_grad(*tensors: Tensor | None) -> bool:
    """True when autograd records operations on any of ``tensors``.

    The fused kernels without a backward (Triton's, cuBLASLt's GELU epilogue) step aside then,
    so fine-tuning through the fast path gets the plain path's gradients.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def bypassable(module: nn.Module, kind: type[nn.Module]) -> bool:
    """Whether the fast path may compute ``module``'s output from its parameters, uncalled.

    Only for a module of exactly ``kind`` with no hooks, its own or global: a subclass or a
    wrapper (LoRA, quantisation) may compute something else, and a hook must see the output.
    Any other module is called as it is on the plain path.
    """
    return (
        type(module) is kind
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


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Within this block (in this thread), run the backbone with PyTorch's plain kernels.

    Example:
        >>> import torch
        >>> from dinov2_heads import create_backbone, plain_kernels
        >>> model = create_backbone("dinov2_vits14", depth=1)
        >>> with plain_kernels():
        ...     out = model.forward_features(torch.randn(1, 3, 28, 28))
    """
    previous = getattr(_state, "enabled", True)
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous
