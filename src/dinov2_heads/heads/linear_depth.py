"""``LinearDepthHead``: the official DINOv2 linear depth head (classification-regression)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.depth_range import check_depth_range
from dinov2_heads.features.features import Features
from dinov2_heads.heads.depth_blocks import backbone_depth, depth_blocks, depth_head_inputs

#: The official linear heads resize every block to this multiple of the patch grid.
UPSAMPLE = 4
#: Added to the ReLU of the bin logits before they are normalised (the official AdaBins rule).
BIN_EPS = 0.1


class LinearDepthHead(nn.Module):
    """The official DINOv2 linear depth head: bins over a depth range, read from block tokens.

    The hub's ``BNHead`` with ``classify=True``: for each of the ``layers`` blocks, the patch
    map (B, D, h, w) (final norm off) is concatenated with that block's class token broadcast
    over the map, giving 2D channels; every block is resized bilinearly
    (``align_corners=False``) to 4x the first block's grid and the blocks are concatenated
    (``2 * layers * D`` channels). A 1x1 convolution ``conv_depth`` gives ``n_bins`` logits per
    pixel; ``relu(logits) + 0.1``, normalised to sum 1, weights the bin centres
    ``linspace(min_depth, max_depth, n_bins)``. The output is in ``[min_depth, max_depth]`` by
    construction.

    The state dict is exactly ``conv_depth.weight`` and ``conv_depth.bias``, so a released
    ``dinov2_{arch}_{nyu,kitti}_linear{,4}_head.pth`` loads with
    ``load_partial(head, path, rename={"decode_head.": ""})`` and nothing missing. The official
    hub builds every linear head with bins 0.001..80 m, the NYU heads included, so that is the
    default here and the released files give the official numbers with it.

    Args:
        embed_dim: D of the backbone.
        layers: How many blocks to read: 1 (the last block, the official "linear") or 4 (the
            official "linear4": blocks ``[2, 5, 8, 11]`` of ViT-S/B, ``[4, 11, 17, 23]`` of
            ViT-L, ``[9, 19, 29, 39]`` of ViT-g); see :meth:`required_blocks`.
        n_bins: Number of depth bins.
        min_depth: Centre of the first bin, in metres.
        max_depth: Centre of the last bin, in metres.

    Example:
        >>> head = LinearDepthHead(384, layers=4)
        >>> head.conv_depth.weight.shape
        torch.Size([256, 3072, 1, 1])
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        layers: int = 1,
        n_bins: int = 256,
        min_depth: float = 0.001,
        max_depth: float = 80.0,
    ) -> None:
        super().__init__()
        for name, value, low in (("embed_dim", embed_dim, 1), ("layers", layers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"LinearDepthHead: {name} must be a positive int, got {value!r}")
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
            raise ValueError(f"LinearDepthHead: n_bins must be an int >= 2, got {n_bins!r}")
        self.embed_dim = embed_dim
        self.layers = layers
        self.n_bins = n_bins
        self.min_depth, self.max_depth = check_depth_range(
            min_depth, max_depth, who="LinearDepthHead"
        )
        self.in_channels = 2 * layers * embed_dim
        self.conv_depth = nn.Conv2d(self.in_channels, n_bins, kernel_size=1)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able: :meth:`from_config` rebuilds the head."""
        return {
            "embed_dim": self.embed_dim,
            "layers": self.layers,
            "n_bins": self.n_bins,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LinearDepthHead:
        """A new head (fresh weights) from :meth:`config`'s output."""
        if not isinstance(config, Mapping):
            raise TypeError(
                f"a LinearDepthHead config must be a mapping, got {type(config).__name__}"
            )
        return cls(**dict(config))

    def required_blocks(self, depth: int) -> tuple[tuple[int, bool], ...]:
        """``(block index, final norm)`` pairs this head reads on a ``depth``-block backbone."""
        return tuple((index, False) for index in depth_blocks(depth, self.layers))

    def bins(self, device: torch.device | None = None) -> Tensor:
        """(n_bins,) bin centres in metres, float32."""
        return torch.linspace(self.min_depth, self.max_depth, self.n_bins, device=device)

    def forward(self, features: Features) -> Tensor:
        """Depth in metres from the blocks of :meth:`required_blocks` held in ``features``.

        Returns:
            See :meth:`decode`.
        """
        blocks = self.required_blocks(backbone_depth(features, "LinearDepthHead"))
        return self.decode(depth_head_inputs(features, blocks, self.embed_dim, "LinearDepthHead"))

    def decode(self, blocks: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Depth in metres from the tokens of the blocks of :meth:`required_blocks`, in order.

        Args:
            blocks: ``layers`` pairs (patch map (B, D, h, w), class token (B, D)), the order
                of the official ``get_intermediate_layers(..., reshape=True,
                return_class_token=True)``.

        Returns:
            (B, 1, 4h, 4w) depth, unclamped (already within the bins' range).
        """
        if len(blocks) != self.layers:
            raise ValueError(
                f"LinearDepthHead(layers={self.layers}) reads {self.layers} blocks, got "
                f"{len(blocks)}"
            )
        maps = []
        for patch_map, class_token in blocks:
            if patch_map.ndim != 4 or patch_map.shape[1] != self.embed_dim:
                raise ValueError(
                    f"LinearDepthHead was built for patch maps (B, {self.embed_dim}, h, w), got "
                    f"{tuple(patch_map.shape)}; build it with the backbone's embed_dim"
                )
            # The class token, broadcast over the map, as D more channels.
            readout = class_token[:, :, None, None].expand_as(patch_map)
            maps.append(torch.cat([patch_map, readout], dim=1))
        size = [UPSAMPLE * s for s in maps[0].shape[-2:]]
        x = torch.cat(
            [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps],
            dim=1,
        )
        return self.depth_from_logits(self.conv_depth(x.to(self.conv_depth.weight.dtype)))

    def depth_from_logits(self, logits: Tensor) -> Tensor:
        """(B, n_bins, H, W) bin logits -> (B, 1, H, W) depth: the official linear normalisation."""
        weights = torch.relu(logits) + BIN_EPS
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bins(logits.device).to(logits.dtype))[
            :, None
        ]

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, layers={self.layers}, n_bins={self.n_bins}, "
            f"min_depth={self.min_depth}, max_depth={self.max_depth}"
        )
