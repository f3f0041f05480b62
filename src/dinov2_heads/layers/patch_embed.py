"""Image to patch tokens."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """A strided convolution that cuts the image into P x P patches: (B, 3, H, W) -> (B, N, D).

    N = (H / P) * (W / P), patches in row-major order. Input sizes are checked by the backbone.

    Args:
        patch_size: Patch side P in pixels.
        in_chans: Image channels.
        embed_dim: Token width D.
    """

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        # Kept so that module printouts and parameter names match the official model.
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(rearrange(self.proj(x), "b d h w -> b (h w) d"))
