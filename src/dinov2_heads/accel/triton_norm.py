"""The Triton kernel behind :mod:`dinov2_heads.accel.norm_kernels`.

Imported only when a kernel is first launched, so that importing the library never imports
Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


# sum = x + gamma * branch and/or out = LayerNorm(sum, or x without a branch), for BLOCK_ROWS
# rows per program. Triton reads the parameters' annotations itself: only the constexpr ones
# carry one.
@triton.jit  # type: ignore[untyped-decorator, unused-ignore]
def norm_kernel(  # type: ignore[no-untyped-def]
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
