"""Whether torch is tracing the model into a graph rather than running it."""

from __future__ import annotations

import torch


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
