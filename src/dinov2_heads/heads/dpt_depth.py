"""``DPTDepthHead``: the official DINOv2 DPT depth head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.depth_range import check_depth_range
from dinov2_heads.features.features import Features
from dinov2_heads.heads.depth_blocks import backbone_depth, depth_blocks, depth_head_inputs
from dinov2_heads.layers.dpt import ConvModule, FeatureFusionBlock, HeadDepth, ReassembleBlocks

#: The DPT head always reads four blocks.
DPT_LAYERS = 4


class DPTDepthHead(nn.Module):
    """The official DINOv2 DPT depth head (Ranftl et al., 2021) on four blocks' tokens.

    The hub's ``DPTHead`` with ``readout_type="project"``: :class:`ReassembleBlocks` turns the
    four blocks (the same as the linear4 head's, final norm off) into maps at 4x, 2x, 1x and
    1/2x the patch grid with ``D / 8, D / 4, D / 2, D`` channels; a 3x3 convolution (``convs``)
    brings each to ``channels``; four :class:`FeatureFusionBlock` merge them from the coarsest
    up, each upsampling 2x; a 3x3 convolution with ReLU (``project``) and :class:`HeadDepth`
    give one channel, and the depth is ``relu(.) + min_depth``. On a (h, w) grid with even
    sides the output is (B, 1, 16h, 16w).

    The state dict keys are the official ones (``reassemble_blocks.*``, ``convs.*``,
    ``fusion_blocks.*``, ``project.*``, ``conv_depth.head.*``), so a released
    ``dinov2_{arch}_{nyu,kitti}_dpt_head.pth`` loads with
    ``load_partial(head, path, rename={"decode_head.": ""})`` and nothing missing. The NYU
    heads use ``max_depth=10.0`` (the default), the KITTI heads ``max_depth=80.0``; the upper
    bound only clamps the output in :class:`~dinov2_heads.dense.Depther`.

    Args:
        embed_dim: D of the backbone (at least 8).
        channels: Width of the fusion path.
        min_depth: The smallest depth, in metres, added to the ReLU output.
        max_depth: The largest depth, in metres (the clamp at inference).

    Example:
        >>> head = DPTDepthHead(384)
        >>> head.reassemble_blocks.out_channels
        (48, 96, 192, 384)
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        channels: int = 256,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 8:
            raise ValueError(f"DPTDepthHead: embed_dim must be an int >= 8, got {embed_dim!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
            raise ValueError(f"DPTDepthHead: channels must be an int >= 2, got {channels!r}")
        self.embed_dim = embed_dim
        self.channels = channels
        self.layers = DPT_LAYERS
        self.min_depth, self.max_depth = check_depth_range(min_depth, max_depth, who="DPTDepthHead")
        post_process = tuple(embed_dim // 2 ** (3 - i) for i in range(DPT_LAYERS))
        self.reassemble_blocks = ReassembleBlocks(embed_dim, post_process)
        self.convs = nn.ModuleList(
            ConvModule(width, channels, 3, padding=1, bias=False) for width in post_process
        )
        self.fusion_blocks = nn.ModuleList(
            FeatureFusionBlock(channels, with_skip=i > 0) for i in range(DPT_LAYERS)
        )
        self.project = ConvModule(channels, channels, 3, padding=1, activation="after")
        self.conv_depth = HeadDepth(channels)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able: :meth:`from_config` rebuilds the head."""
        return {
            "embed_dim": self.embed_dim,
            "channels": self.channels,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DPTDepthHead:
        """A new head (fresh weights) from :meth:`config`'s output."""
        if not isinstance(config, Mapping):
            raise TypeError(f"a DPTDepthHead config must be a mapping, got {type(config).__name__}")
        return cls(**dict(config))

    def required_blocks(self, depth: int) -> tuple[tuple[int, bool], ...]:
        """``(block index, final norm)`` pairs this head reads on a ``depth``-block backbone."""
        return tuple((index, False) for index in depth_blocks(depth, DPT_LAYERS))

    def forward(self, features: Features) -> Tensor:
        """Depth in metres from the blocks of :meth:`required_blocks` held in ``features``.

        Returns:
            See :meth:`decode`.
        """
        blocks = self.required_blocks(backbone_depth(features, "DPTDepthHead"))
        return self.decode(depth_head_inputs(features, blocks, self.embed_dim, "DPTDepthHead"))

    def decode(self, blocks: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Depth in metres from the tokens of the four blocks of :meth:`required_blocks`.

        Args:
            blocks: Four pairs (patch map (B, D, h, w), class token (B, D)), oldest block
                first, as the official ``get_intermediate_layers(..., reshape=True,
                return_class_token=True)`` returns them.

        Returns:
            (B, 1, 16h, 16w) depth (about that size for odd h or w), at least ``min_depth``
            and not clamped above.
        """
        if len(blocks) != DPT_LAYERS:
            raise ValueError(f"DPTDepthHead reads {DPT_LAYERS} blocks, got {len(blocks)}")
        for patch_map, _ in blocks:
            if patch_map.ndim != 4 or patch_map.shape[1] != self.embed_dim:
                raise ValueError(
                    f"DPTDepthHead was built for patch maps (B, {self.embed_dim}, h, w), got "
                    f"{tuple(patch_map.shape)}; build it with the backbone's embed_dim"
                )
        maps = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(blocks), strict=True)]
        # Coarsest first: the last block's half-resolution map, then the finer ones as skips.
        out = self.fusion_blocks[0](maps[-1])
        for fusion, skip in zip(self.fusion_blocks[1:], reversed(maps[:-1]), strict=True):
            out = fusion(out, skip)
        return torch.relu(self.conv_depth(self.project(out))) + self.min_depth

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, channels={self.channels}, "
            f"min_depth={self.min_depth}, max_depth={self.max_depth}"
        )
