"""The GELU feed-forward network with its first layer and GELU as one cuBLASLt call."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.accel.conditions import bypassable, needs_grad, runs_fast
from dinov2_heads.accel.fallback import KernelFallback
from dinov2_heads.layers import Mlp

_REDUCED = (torch.bfloat16, torch.float16)


class FastMlp(KernelFallback, Mlp):
    """:class:`~dinov2_heads.layers.Mlp` whose ``fc1``, bias and GELU are one GEMM on a GPU.

    With bf16 or fp16 weights on CUDA, where autograd records nothing, ``fc1`` and its GELU run
    as one cuBLASLt call with a GELU epilogue. That GELU is the tanh approximation, at most 5e-4
    from the exact one (below bf16's and fp16's rounding): the only fast computation that is not
    exact in real arithmetic. In float32, with ``fc1`` or ``act`` hooked or replaced (another
    activation, a LoRA wrapper), and off the GPU, this is the plain MLP.
    """

    def forward(self, x: Tensor) -> Tensor:
        fc1 = self.fc1
        if (
            fc1.bias is not None
            and x.dtype in _REDUCED
            and x.shape[-1] == fc1.in_features
            and runs_fast(x)
            and not needs_grad(x, fc1.weight, fc1.bias)  # the fused call has no backward
            and bypassable(fc1, nn.Linear)
            and bypassable(self.act, nn.GELU)
        ):
            bias = fc1.bias
            flat = x.reshape(-1, x.shape[-1])
            hidden = self.try_kernel(
                "the cuBLASLt GELU epilogue",
                lambda: torch._addmm_activation(bias, flat, fc1.weight.t(), use_gelu=True),
            )
            if hidden is not None:
                out = self.fc2(hidden)
                return out.reshape(*x.shape[:-1], out.shape[-1])  # -1 fails for 0 rows
        return super().forward(x)
