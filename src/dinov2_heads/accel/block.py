"""The transformer block with its residual additions fused into Triton kernels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.accel import norm_kernels, norm_ops
from dinov2_heads.accel.conditions import bypassable, runs_fast
from dinov2_heads.accel.fallback import KernelFallback
from dinov2_heads.accel.layer_norm import FastLayerNorm
from dinov2_heads.layers import Block, LayerScale


class FastBlock(KernelFallback, Block):
    """:class:`~dinov2_heads.layers.Block` with fewer passes over the tokens on a GPU.

    The same sums as the plain block, ``x + ls1(attn(norm1(x)))`` then
    ``x + ls2(mlp(norm2(x)))``, and the same parameters. On a GPU, each LayerScale and residual
    addition is one Triton kernel (rounded once, as ``torch.addcmul`` rounds), and the first is
    fused with ``norm2``; with :attr:`compiled_kernels`, the same kernels go into the graphs
    ``torch.compile`` captures there (as operators of :mod:`~dinov2_heads.accel.norm_ops`). A
    LayerScale or ``norm2`` with hooks, or replaced by another class, is called as the plain
    block calls it. Elsewhere (CPU, other tracing) this is the plain block.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (runs_fast(x) or self._kernels_in_graph(x)):
            return super().forward(x)
        branch, gamma = _unscaled(self.ls1, self.attn(self.norm1(x)))
        x, normed = self._add_and_norm(x, branch, gamma)
        branch, gamma = _unscaled(self.ls2, self.mlp(normed))
        return self._add(x, branch, gamma)

    def _add_and_norm(
        self, x: Tensor, branch: Tensor, gamma: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(s, norm2(s))`` with ``s = x + gamma * branch``, in one kernel where possible."""
        norm = self.norm2
        if isinstance(norm, nn.LayerNorm) and bypassable(norm, nn.LayerNorm, FastLayerNorm):
            if self._kernels_in_graph(x):
                if norm_kernels.norm_computable(norm, x) and norm_kernels.branch_computable(
                    x, branch, gamma
                ):
                    return norm_ops.add_scaled_layer_norm(x, branch, gamma, norm)
            elif norm_kernels.norm_usable(norm, x) and norm_kernels.branch_usable(x, branch, gamma):
                result = self.try_kernel(
                    "the Triton residual + LayerNorm kernel",
                    lambda: norm_kernels.launch(x, branch, gamma, norm),
                )
                if result is not None:
                    return result
        total = self._add(x, branch, gamma)
        return total, norm(total)

    def _add(self, x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
        """``x + gamma * branch`` (``x + branch`` when gamma is None), rounded once."""
        if self._kernels_in_graph(x):
            if norm_kernels.branch_computable(x, branch, gamma):
                return norm_ops.add_scaled(x, branch, gamma)
        elif norm_kernels.branch_usable(x, branch, gamma):
            result = self.try_kernel(
                "the Triton residual kernel",
                lambda: norm_kernels.launch(x, branch, gamma, None),
            )
            if result is not None:
                return result[0]
        return torch.addcmul(x, branch, gamma) if gamma is not None else x + branch

    def _kernels_in_graph(self, x: Tensor) -> bool:
        return self.compiled_kernels and norm_ops.in_graph(x)


def _unscaled(scale: nn.Module, branch: Tensor) -> tuple[Tensor, Tensor | None]:
    # (branch, gamma) for the fused addition; a scale module of another kind, or one with
    # hooks, is applied here.
    if isinstance(scale, LayerScale) and bypassable(scale, LayerScale):
        return branch, scale.gamma
    if bypassable(scale, nn.Identity):
        return branch, None
    return scale(branch), None
