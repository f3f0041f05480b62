"""Multi-head self-attention through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, as in the official model.

    ``scaled_dot_product_attention`` picks the fastest kernel available (flash or memory-efficient
    attention on CUDA, a fused kernel on CPU), so no xFormers is needed.

    Args:
        dim: Token width D.
        num_heads: Number of attention heads; must divide ``dim``.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        proj_bias: Whether the output projection has a bias.
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}; "
                "choose a head count that divides the width"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        qkv = rearrange(self.qkv(x), "b t (three h e) -> three b h t e", three=3, h=self.num_heads)
        q, k, v = torch.unbind(qkv, dim=0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h t e -> b t (h e)"))
