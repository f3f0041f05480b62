"""``nn.LayerNorm`` as one Triton kernel on a GPU."""

from __future__ import annotations

from torch import Tensor, nn

from dinov2_heads.accel import norm_kernels, norm_ops
from dinov2_heads.accel.conditions import runs_fast
from dinov2_heads.accel.fallback import KernelFallback


class FastLayerNorm(KernelFallback, nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension, by a Triton kernel on a GPU: (..., D) -> (..., D).

    The same parameters as ``nn.LayerNorm`` (``weight``, ``bias``). The kernel reads and writes
    each row once with float32 statistics; it runs eagerly on CUDA where autograd records
    nothing and Triton is installed, and, with :attr:`compiled_kernels`, inside the graphs
    ``torch.compile`` captures there (as an operator of :mod:`~dinov2_heads.accel.norm_ops`).
    PyTorch's LayerNorm runs everywhere else. Equal to PyTorch's LayerNorm up to float rounding.
    """

    def forward(self, x: Tensor) -> Tensor:
        if runs_fast(x) and norm_kernels.norm_usable(self, x):
            out = self.try_kernel(
                "the Triton LayerNorm kernel", lambda: norm_kernels.launch(x, None, None, self)[1]
            )
            if out is not None:
                return out
        elif (
            self.compiled_kernels and norm_ops.in_graph(x) and norm_kernels.norm_computable(self, x)
        ):
            return norm_ops.layer_norm(x, self)
        return super().forward(x)
