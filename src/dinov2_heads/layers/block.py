"""One pre-norm transformer block."""

from __future__ import annotations

from torch import Tensor, nn

from dinov2_heads.layers.attention import Attention
from dinov2_heads.layers.layer_scale import LayerScale


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``: (B, T, D) -> (B, T, D).

    Args:
        dim: Token width D.
        num_heads: Attention heads.
        mlp: The feed-forward network (:class:`Mlp` or :class:`SwiGLUFFNFused`).
        init_values: Initial LayerScale value; ``None`` disables LayerScale.
        qkv_bias: Bias on the fused qkv projection.
        proj_bias: Bias on the attention output projection.
        norm_eps: LayerNorm epsilon (1e-6 in DINOv2).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp: nn.Module,
        *,
        init_values: float | None = 1.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))
