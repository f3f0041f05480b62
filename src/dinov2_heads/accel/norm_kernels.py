"""LayerNorm, and residual addition + LayerScale + LayerNorm, as single Triton kernels.

PyTorch's LayerNorm kernel reaches about a third of the memory bandwidth for this model's widths
(384 to 1536) in bf16; it was 19% of ViT-S's GPU time once the other passes were fused. The
kernel reads each row once and writes it once, with float32 statistics. :func:`launch` computes,
in one pass:

- ``F.layer_norm`` over the last dimension (``branch=None``);
- ``x + gamma * branch`` (rounded to the input dtype, as ``torch.addcmul`` returns it) and the
  LayerNorm of that sum, in one pass instead of two;
- the sum alone (``norm=None``), a little faster than ``torch.addcmul``, whose kernel is not
  vectorised for a broadcast ``gamma``: 1.04x and 1.26x at ViT-S's and ViT-L's widths (H200).

The callers (:class:`~dinov2_heads.accel.FastLayerNorm`, :class:`~dinov2_heads.accel.FastBlock`)
check :func:`norm_usable` / :func:`branch_usable` first and compute with PyTorch otherwise.
Triton is imported on the first launch, not before. Inside graphs that ``torch.compile``
captures, the same launches run as the custom operators of :mod:`dinov2_heads.accel.norm_ops`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch
from torch import Tensor, nn

from dinov2_heads.accel.conditions import needs_grad, plain_tensors

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _triton_installed() -> bool:
    # Looked up on the first call, without importing Triton.
    return importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    """Whether Triton is installed (looked up once, without importing it)."""
    return _triton_installed()


def kernels_available(x: Tensor) -> bool:
    """Whether the kernel can run on ``x``: Triton installed, and a GPU tensor (or a CPU one
    under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use without a GPU)."""
    if not triton_installed() or not plain_tensors(x):
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def norm_usable(norm: nn.LayerNorm, x: Tensor) -> bool:
    """Whether the kernel computes ``norm(x)`` here and now: :func:`norm_computable`, on a
    tensor the kernel can read (:func:`kernels_available`)."""
    return (
        kernels_available(x) and plain_tensors(norm.weight, norm.bias) and norm_computable(norm, x)
    )


def norm_computable(norm: nn.LayerNorm, x: Tensor) -> bool:
    """Whether the kernel computes ``norm(x)``: an affine LayerNorm over the last dimension of
    a float tensor of its dtype, with no autograd recording (the kernel has no backward).

    Where the kernel runs is :func:`kernels_available`'s question; this one holds while
    ``torch.compile`` traces too.
    """
    weight, bias = norm.weight, norm.bias
    return (
        weight is not None
        and bias is not None
        and not needs_grad(x, weight, bias)
        and len(norm.normalized_shape) == 1
        and x.shape[-1] == norm.normalized_shape[0]
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and x.numel() > 0
    )


def branch_usable(x: Tensor, branch: Tensor, gamma: Tensor | None) -> bool:
    """Whether the kernel computes ``x + gamma * branch`` (``x + branch`` without gamma) here
    and now: :func:`branch_computable`, on tensors the kernel can read."""
    return (
        kernels_available(x)
        and plain_tensors(branch, gamma)
        and branch_computable(x, branch, gamma)
    )


def branch_computable(x: Tensor, branch: Tensor, gamma: Tensor | None) -> bool:
    """Whether the kernel computes ``x + gamma * branch``: tensors of one shape, dtype and
    device, with no autograd recording; holds while ``torch.compile`` traces too."""
    return (
        not needs_grad(x, branch, gamma)
        and branch.shape == x.shape
        and branch.dtype == x.dtype
        and branch.device == x.device
        and (gamma is None or gamma.shape == x.shape[-1:])
        and x.dtype in _DTYPES
        and x.numel() > 0
    )


def launch(
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
    launch configuration; ``benchmarks/norm_kernels.py`` times the alternatives. Raises
    whatever Triton raises when the kernel cannot be built or launched here.
    """
    if norm is None:
        return launch_parts(
            x, branch, gamma, None, block_elements=block_elements, num_warps=num_warps
        )
    return launch_parts(
        x,
        branch,
        gamma,
        (norm.weight, norm.bias, norm.eps),
        block_elements=block_elements,
        num_warps=num_warps,
    )


def launch_parts(
    x: Tensor,
    branch: Tensor | None,
    gamma: Tensor | None,
    norm: tuple[Tensor, Tensor, float] | None,
    *,
    block_elements: int = 8192,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`launch` with the LayerNorm given as its (weight, bias, eps)."""
    from dinov2_heads.accel.triton_norm import norm_kernel

    width = x.shape[-1]
    x2 = x.reshape(-1, width).contiguous()
    rows = x2.shape[0]
    out = torch.empty_like(x2) if norm is not None else x2
    if branch is not None:
        branch2 = branch.reshape(-1, width).contiguous()
        total = torch.empty_like(x2)
    else:
        branch2, total = x2, x2
    weight, bias, eps = norm if norm is not None else (x2, x2, 0.0)
    block_width = 1 << (width - 1).bit_length()  # the next power of two
    # About block_elements per program: several short rows, or one long row.
    block_rows = max(1, min(16, block_elements // block_width))
    grid = (-(-rows // block_rows),)
    # Triton launches on the current device and its stream: make that the tensors' device, so
    # that a model on cuda:1 is not computed against cuda:0's stream.
    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with on_device:
        norm_kernel[grid](
            x2,
            branch2,
            gamma if gamma is not None else x2,
            weight,
            bias,
            # The pointers of a result not computed are not written to: the kernel's
            # constexpr flags leave those stores out.
            total,
            out,
            rows,
            width,
            eps,
            HAS_BRANCH=branch is not None,
            HAS_GAMMA=gamma is not None,
            WRITE_NORM=norm is not None,
            BLOCK_ROWS=block_rows,
            BLOCK_WIDTH=block_width,
            num_warps=num_warps or (8 if block_width * block_rows >= 8192 else 4),
        )
    return total.reshape(x.shape), out.reshape(x.shape)
