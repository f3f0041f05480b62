"""Faster versions of the backbone's modules for the uncompiled GPU forward pass.

:func:`accelerate` swaps them into a model once, in place; :class:`~dinov2_heads.FrozenBackbone`
does it on its first CUDA batch. The plain model in :mod:`dinov2_heads.layers` and
:mod:`dinov2_heads.backbone` never asks which kernels to use; these subclasses do, on each
call, and compute exactly what the plain modules do on CPU and while tracing:

- :class:`FastPatchEmbed`: the patch convolution as one matrix product;
- :class:`FastVisionTransformer`: the position table resized by two resampling matrices;
- :class:`FastLayerNorm`: LayerNorm as one Triton kernel;
- :class:`FastBlock`: LayerScale + residual additions as Triton kernels, the first fused with
  the next LayerNorm;
- :class:`FastMlp`: with bf16 or fp16 weights, ``fc1`` + bias + GELU as one cuBLASLt call (the
  tanh GELU, within bf16 and fp16 rounding of the exact one).

Triton is imported on the first kernel launch. A kernel that fails to build or launch switches
off in its module, which computes the plain way from then on; the failures of one forward pass
are logged as one warning per cause. ``accelerate(model, compiled_kernels=True)`` also keeps the
Triton kernels in the graphs ``torch.compile`` captures, as the custom operators of
:mod:`dinov2_heads.accel.norm_ops`.
"""

from dinov2_heads.accel.accelerate import FAST_VERSIONS, accelerate
from dinov2_heads.accel.block import FastBlock
from dinov2_heads.accel.layer_norm import FastLayerNorm
from dinov2_heads.accel.mlp import FastMlp
from dinov2_heads.accel.patch_embed import FastPatchEmbed
from dinov2_heads.accel.vision_transformer import FastVisionTransformer

__all__ = [
    "FAST_VERSIONS",
    "FastBlock",
    "FastLayerNorm",
    "FastMlp",
    "FastPatchEmbed",
    "FastVisionTransformer",
    "accelerate",
]
