"""The official bicubic resize of the position table as two resampling matrices.

``torch.export`` keeps the grid size symbolic through these matrices, where it would freeze the
``scale_factor`` of ``F.interpolate`` into a constant: one exported or compiled graph then serves
every image size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def resample_pos_table(
    table: Tensor, grid_h: int, grid_w: int, *, offset: float, antialias: bool
) -> Tensor:
    """The official bicubic resize of the position table, as two resampling matrices.

    ``(1, D, S, S) -> (1, D, h, w)`` as ``M_h @ table @ M_w^T`` with ``M_h`` (h, S) and ``M_w``
    (w, S) built with tensor operations from the grid sizes, so ``torch.export`` keeps h and w
    symbolic. ``F.interpolate`` cannot be exported that way: torch.export freezes a
    ``scale_factor`` computed from a symbolic size into a constant, and an ONNX ``Resize`` from
    sizes maps pixels with h / S instead of the official (h + 0.1) / S. The weights are PyTorch's
    own bicubic kernels (see :func:`_bicubic_matrix`), so the result equals ``F.interpolate`` to
    float rounding (about 1e-7), and a grid of the table's own size keeps the table unchanged.
    """
    side = table.shape[-1]
    rows = torch.arange(grid_h, device=table.device, dtype=torch.float32)
    cols = torch.arange(grid_w, device=table.device, dtype=torch.float32)
    # The grid sizes as tensors (the last index + 1), so that the comparison and the scale stay
    # in the graph rather than becoming Python constants.
    size_h, size_w = rows[-1:] + 1, cols[-1:] + 1
    unchanged = (size_h == side) & (size_w == side)
    matrix_h = _bicubic_matrix(rows, size_h, side, offset, antialias, unchanged)
    matrix_w = _bicubic_matrix(cols, size_w, side, offset, antialias, unchanged)
    return matrix_h.to(table.dtype) @ table @ matrix_w.T.to(table.dtype)


def _bicubic_matrix(
    positions: Tensor, size: Tensor, side: int, offset: float, antialias: bool, unchanged: Tensor
) -> Tensor:
    """(n,) output positions -> (n, S) weights of PyTorch's bicubic resize from S samples.

    Without antialias (the plain models): ``scale_factor = (n + offset) / S``, source
    coordinate ``(i + 0.5) / scale_factor - 0.5``, Keys kernel with a = -0.75, and taps past an
    edge clamped onto it. With antialias (the register models): scale ``S / n`` (or, with an
    offset, the inverted ``scale_factor`` as above), the kernel with a = -0.5 stretched by the
    scale when shrinking, taps past an edge dropped and each row renormalised. The arithmetic
    follows ATen's CPU kernels step by step.
    """
    if antialias:
        if offset:
            # A custom configuration: F.interpolate by scale_factor, which ATen inverts in double
            # and rounds once, and a side whose size is unchanged is copied, not resampled.
            scale = (1.0 / ((size.double() + offset) / side)).float()
            scale = torch.where(size == side, 1.0, scale)
        else:
            scale = side / size
        center = scale * (positions + 0.5)
        source = torch.arange(side, device=positions.device, dtype=torch.float32)
        stretch = torch.clamp(1.0 / scale, max=1.0)
        weights = _keys_kernel((source - center[:, None] + 0.5) * stretch, a=-0.5)
        return weights / weights.sum(dim=1, keepdim=True)
    # ATen inverts the double scale factor and rounds it to float once.
    scale = (1.0 / ((size.double() + offset) / side)).float()
    scale = torch.where(unchanged, 1.0, scale)
    coordinate = scale * (positions + 0.5) - 0.5
    # Two extra taps on each side, folded back onto the edge samples as ATen clamps them.
    source = torch.arange(-2, side + 2, device=positions.device, dtype=torch.float32)
    weights = _keys_kernel(source - coordinate[:, None], a=-0.75)
    samples = torch.arange(side, device=positions.device, dtype=torch.float32)
    fold = (torch.clamp(source, 0, side - 1)[:, None] == samples).float()
    return weights @ fold


def _keys_kernel(x: Tensor, *, a: float) -> Tensor:
    """The cubic convolution kernel of Keys (1981), zero beyond a distance of 2."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, 0.0))
