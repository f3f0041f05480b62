"""LayerNorm, and residual addition + LayerScale + LayerNorm, as single Triton kernels.

PyTorch's LayerNorm kernel reaches about a third of the memory bandwidth for this model's widths
(384 to 1536) in bf16; it was 19% of ViT-S's GPU time once the other passes were fused. The
kernels here read each row once and write it once, with float32 statistics:

- :func:`layer_norm` is ``F.layer_norm`` over the last dimension;
- :func:`add_scaled_layer_norm` returns ``x + gamma * branch`` (rounded to the input dtype, as
  ``torch.addcmul`` returns it) and the LayerNorm of that sum, in one pass instead of two;
- :func:`add_scaled` returns the sum alone, a little faster than ``torch.addcmul``, whose
  kernel is not vectorised for a broadcast ``gamma``.

They fall back to the PyTorch operations when Triton is missing, when the tensors are not on a
GPU, where autograd records the operations (the kernels have no backward), under ``torch.func``
transforms such as ``vmap``, and for good (with one warning) if a kernel fails to build on this
machine. Running out of GPU memory raises as PyTorch's operations would, and switches nothing off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import TypeGuard

import torch
from torch import Tensor, nn

from dinov2_heads.layers.fast import bypassable, needs_grad

_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton's CPU interpreter (the tests use it where there is no GPU).
_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
# Set when a kernel failed to build or run here; the PyTorch operations are used from then on.
_broken: list[str] = []

if _HAS_TRITON:
    import triton
    import triton.language as tl

    # Triton reads the parameters' annotations itself: only the constexpr ones carry one.
    @triton.jit  # type: ignore[untyped-decorator, unused-ignore]
    def _norm_kernel(  # type: ignore[no-untyped-def]
        x_ptr,
        branch_ptr,
        gamma_ptr,
        weight_ptr,
        bias_ptr,
        sum_ptr,
        out_ptr,
        rows,
        width,
        eps,
        HAS_BRANCH: tl.constexpr,
        HAS_GAMMA: tl.constexpr,
        WRITE_NORM: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_WIDTH: tl.constexpr,
    ):
        row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        col = tl.arange(0, BLOCK_WIDTH)
        col_mask = col < width
        mask = (row < rows)[:, None] & col_mask[None, :]
        offsets = row[:, None].to(tl.int64) * width + col[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            branch = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_GAMMA:
                gamma = tl.load(gamma_ptr + col, mask=col_mask, other=0.0).to(tl.float32)
                branch = branch * gamma[None, :]
            stored = (x + branch).to(sum_ptr.dtype.element_ty)
            tl.store(sum_ptr + offsets, stored, mask=mask)
            # Normalise the sum as stored, as LayerNorm after torch.addcmul would.
            x = stored.to(tl.float32)
        if WRITE_NORM:
            mean = tl.sum(x, axis=1) / width
            centred = tl.where(mask, x - mean[:, None], 0.0)
            variance = tl.sum(centred * centred, axis=1) / width
            inv_std = 1.0 / tl.sqrt(variance + eps)
            weight = tl.load(weight_ptr + col, mask=col_mask, other=0.0).to(tl.float32)
            bias = tl.load(bias_ptr + col, mask=col_mask, other=0.0).to(tl.float32)
            out = centred * inv_std[:, None] * weight[None, :] + bias[None, :]
            tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def kernels_available(x: Tensor) -> bool:
    """Whether the Triton kernels can run on ``x`` (Triton installed, GPU or Triton's CPU
    interpreter, and no earlier failure)."""
    if not _HAS_TRITON or _broken or not _plain_tensors(x):
        return False
    return x.is_cuda or (x.device.type == "cpu" and _INTERPRETER)


def _plain_tensors(*tensors: Tensor | None) -> bool:
    # torch.func transforms (vmap, grad, jvp) wrap tensors in ones without a storage that
    # Triton could read; PyTorch's operations know how to handle them.
    return not any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def layer_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """``norm(x)``, by the kernel when ``norm`` is a plain LayerNorm over the last dimension."""
    if _norm_usable(norm, x) and (result := _try_launch(x, None, None, norm)) is not None:
        return result[1]
    return norm(x)


def add_scaled_layer_norm(
    x: Tensor, branch: Tensor, gamma: Tensor | None, norm: nn.LayerNorm
) -> tuple[Tensor, Tensor]:
    """``(s, norm(s))`` with ``s = x + gamma * branch`` (``x + branch`` when gamma is None)."""
    if (
        _norm_usable(norm, x)
        and _branch_usable(x, branch, gamma)
        and (result := _try_launch(x, branch, gamma, norm)) is not None
    ):
        return result
    total = add_scaled(x, branch, gamma)
    return total, norm(total)


def add_scaled(x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
    """``x + gamma * branch`` (``x + branch`` when gamma is None), rounded once.

    ``torch.addcmul`` computes the same, but its kernel is not vectorised when ``gamma`` is
    broadcast: this kernel ran 1.04x and 1.26x faster at ViT-S's and ViT-L's widths (H200).
    """
    if (
        kernels_available(x)
        and _branch_usable(x, branch, gamma)
        and (result := _try_launch(x, branch, gamma, None)) is not None
    ):
        return result[0]
    return torch.addcmul(x, branch, gamma) if gamma is not None else x + branch


def _try_launch(
    x: Tensor, branch: Tensor | None, gamma: Tensor | None, norm: nn.LayerNorm | None
) -> tuple[Tensor, Tensor] | None:
    """:func:`_launch`, or None (and the kernels off for good) if the kernel fails to build."""
    try:
        return _launch(x, branch, gamma, norm)
    except torch.cuda.OutOfMemoryError:
        raise  # the batch's, not the kernel's: raised as PyTorch's own would be
    except Exception as error:  # any failure to build: use PyTorch
        _give_up(error)
        return None


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _norm_usable(norm: nn.Module, x: Tensor) -> TypeGuard[nn.LayerNorm]:
    # True when the kernel can compute norm(x): a plain LayerNorm over the last dimension.
    return (
        isinstance(norm, nn.LayerNorm)
        and bypassable(norm, nn.LayerNorm)  # not a subclass, no hooks: norm(x) runs them
        and kernels_available(x)
        and not needs_grad(x, norm.weight, norm.bias)
        and _plain_tensors(norm.weight, norm.bias)
        and norm.weight is not None
        and norm.bias is not None
        and len(norm.normalized_shape) == 1
        and x.shape[-1] == norm.normalized_shape[0]
        and x.dtype in _DTYPES
        and norm.weight.dtype == x.dtype
        and x.numel() > 0
    )


def _branch_usable(x: Tensor, branch: Tensor, gamma: Tensor | None) -> bool:
    return (
        not needs_grad(x, branch, gamma)
        and _plain_tensors(branch, gamma)
        and branch.shape == x.shape
        and branch.dtype == x.dtype
        and branch.device == x.device
        and x.dtype in _DTYPES
        and x.numel() > 0
    )


def _launch(
    x: Tensor,
    branch: Tensor | None,
    gamma: Tensor | None,
    norm: nn.LayerNorm | None,
    *,
    block_elements: int = 8192,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """One kernel launch; returns (sum, normed), either of them ``x`` when not computed.

    ``block_elements`` (rows per program times the padded width) and ``num_warps`` are the
    launch configuration; ``benchmarks/norm_kernels.py`` times the alternatives.
    """
    width = x.shape[-1]
    x2 = x.reshape(-1, width).contiguous()
    rows = x2.shape[0]
    out = torch.empty_like(x2) if norm is not None else x2
    if branch is not None:
        branch2 = branch.reshape(-1, width).contiguous()
        total = torch.empty_like(x2)
    else:
        branch2, total = x2, x2
    block_width = triton.next_power_of_2(width)
    # About block_elements per program: several short rows, or one long row.
    block_rows = max(1, min(16, block_elements // block_width))
    grid = (triton.cdiv(rows, block_rows),)
    # Triton launches on the current device and its stream: make that the tensors' device, so
    # that a model on cuda:1 is not computed against cuda:0's stream.
    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with on_device:
        _norm_kernel[grid](
            x2,
            branch2,
            gamma if gamma is not None else x2,
            norm.weight if norm is not None else x2,
            norm.bias if norm is not None else x2,
            total,
            out,
            rows,
            width,
            norm.eps if norm is not None else 0.0,
            HAS_BRANCH=branch is not None,
            HAS_GAMMA=gamma is not None,
            WRITE_NORM=norm is not None,
            BLOCK_ROWS=block_rows,
            BLOCK_WIDTH=block_width,
            num_warps=num_warps or (8 if block_width * block_rows >= 8192 else 4),
        )
    return total.reshape(x.shape), out.reshape(x.shape)


def _give_up(error: Exception) -> None:
    _broken.append(f"{type(error).__name__}: {error}")
    lines = [line for line in str(error).splitlines() if line.strip()]
    warnings.warn(
        "the Triton LayerNorm kernels failed on this machine and are switched off; the "
        f"backbone goes on with PyTorch's LayerNorm ({type(error).__name__}: "
        f"{lines[-1][:300] if lines else ''})",
        RuntimeWarning,
        stacklevel=4,
    )
