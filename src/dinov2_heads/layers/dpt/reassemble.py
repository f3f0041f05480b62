"""``ReassembleBlocks``: DPT's readout projection and per-block resampling of ViT maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from dinov2_heads.layers.dpt.conv_module import ConvModule


class ReassembleBlocks(nn.Module):
    """Turn four ViT blocks' tokens into a feature pyramid at 4x, 2x, 1x and 1/2x the grid.

    For block i, with patch map x (B, D, h, w) and class token c (B, D): the "project" readout
    ``GELU(Linear(2D, D)(cat([x_n, c])))`` on every patch token x_n, then a 1x1 convolution to
    ``out_channels[i]`` channels (``projects``), then ``resize_layers[i]``: a 4x4 transposed
    convolution with stride 4, a 2x2 one with stride 2, nothing, and a 3x3 convolution with
    stride 2 (output ``ceil(h / 2)``). Keys ``readout_projects.{i}.0.*``,
    ``projects.{i}.conv.*`` and ``resize_layers.{0,1,3}.*``, as the official module with
    ``readout_type="project"``.

    Args:
        embed_dim: D of the backbone.
        out_channels: The four post-process widths; the official heads use
            ``(D / 8, D / 4, D / 2, D)``.
    """

    def __init__(self, embed_dim: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        channels = tuple(out_channels)
        if len(channels) != 4:
            raise ValueError(f"ReassembleBlocks needs four output widths, got {channels}")
        self.embed_dim = embed_dim
        self.out_channels = channels
        self.projects = nn.ModuleList(ConvModule(embed_dim, c, 1) for c in channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(channels[1], channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in channels
        )

    def forward(self, blocks: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """Four (patch map (B, D, h, w), class token (B, D)) pairs -> four maps.

        Returns:
            (B, out_channels[0], 4h, 4w), (B, out_channels[1], 2h, 2w),
            (B, out_channels[2], h, w), (B, out_channels[3], ceil(h / 2), ceil(w / 2)).
        """
        if len(blocks) != len(self.projects):
            raise ValueError(
                f"ReassembleBlocks takes {len(self.projects)} blocks, got {len(blocks)}"
            )
        out = []
        for (patch_map, class_token), readout, project, resize in zip(
            blocks, self.readout_projects, self.projects, self.resize_layers, strict=True
        ):
            h = patch_map.shape[-2]
            tokens = rearrange(patch_map, "b d h w -> b (h w) d")
            readout_tokens = class_token[:, None, :].expand_as(tokens)
            tokens = readout(torch.cat([tokens, readout_tokens], dim=-1))
            x = rearrange(tokens, "b (h w) d -> b d h w", h=h)
            out.append(resize(project(x)))
        return out
