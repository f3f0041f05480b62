"""``LinearSegmentationHead``: the official DINOv2 linear segmentation head (BNHead)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Self

from dinov2_heads.features.features import Features
from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.config import config_arguments
from dinov2_heads.heads.inputs import require_features


class LinearSegmentationHead(ClassNamesMixin):
    """The official segmentation ``BNHead``: batch norm and a 1x1 convolution on patch maps.

    The patch maps (B, D, h, w) of the last ``layers`` blocks, after the final norm, are each
    resized (bilinear, ``align_corners=False``) to the first one's size and concatenated on
    channels, then ``bn`` (``BatchNorm2d`` over ``layers * D`` channels, the official
    ``SyncBatchNorm``), ``Dropout2d`` in training, and ``conv_seg`` (1x1 convolution) to K
    classes: logits on the patch grid (B, K, h, w). ``layers=1`` is the released "linear" head,
    ``layers=4`` the released "ms" head.

    The state dict keys are the official ones (``bn.weight``, ``bn.bias``, ``bn.running_mean``,
    ``bn.running_var``, ``bn.num_batches_tracked``, ``conv_seg.weight``, ``conv_seg.bias``), so
    a released ``dinov2_vits14_ade20k_linear_head.pth`` loads with
    ``load_partial(head, path, rename={"decode_head.": ""})`` and nothing missing.

    Args:
        embed_dim: D of the backbone.
        num_classes: K (150 for the ADE20K heads, 21 for VOC2012).
        layers: How many of the last blocks to read.
        dropout: ``Dropout2d`` probability before ``conv_seg`` in training (the released
            configurations trained with 0; mmsegmentation's default is 0.1).
        class_names: Optional K names, saved in the state dict and checked on load.

    Example:
        >>> head = LinearSegmentationHead(384, 21, layers=4)
        >>> head.conv_seg.weight.shape
        torch.Size([21, 1536, 1, 1])
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        layers: int = 1,
        dropout: float = 0.1,
        class_names: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"LinearSegmentationHead: {name} must be a positive int, got {value!r}"
                )
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(
                f"LinearSegmentationHead: layers must be a positive int (1 for the official "
                f"'linear' head, 4 for 'ms'), got {layers!r}"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ValueError(
                f"LinearSegmentationHead: dropout must be a probability in [0, 1), got {dropout!r}"
            )
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.layers = layers
        self.dropout_p = float(dropout)
        channels = layers * embed_dim
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(self.dropout_p)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.class_names = class_names
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: ``conv_seg`` weight ~ N(0, 0.01), bias 0; BN defaults."""
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        if self.conv_seg.bias is not None:
            nn.init.zeros_(self.conv_seg.bias)
        self.bn.reset_parameters()

    def required_blocks(self, depth: int) -> tuple[tuple[int, bool], ...]:
        """The last ``layers`` blocks of a backbone of ``depth`` blocks, normed."""
        if self.layers > depth:
            raise ValueError(
                f"LinearSegmentationHead reads the last {self.layers} blocks but the backbone "
                f"has {depth}; build the head with layers <= {depth}"
            )
        return tuple((depth - self.layers + i, True) for i in range(self.layers))

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able: :meth:`from_config` rebuilds the head."""
        return {
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "layers": self.layers,
            "dropout": self.dropout_p,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A new head (fresh weights) from :meth:`config`'s output."""
        return cls(**config_arguments(cls, config))

    def input_maps(self, features: Features) -> Tensor:
        """The concatenated input (B, layers * D, h, w), before ``bn``."""
        features = require_features(features, "LinearSegmentationHead")
        if features.embed_dim != self.embed_dim:
            raise ValueError(
                f"LinearSegmentationHead was built for D = {self.embed_dim} but the features "
                f"have D = {features.embed_dim}; build it with embed_dim={features.embed_dim}"
            )
        if features.depth is not None and self.layers > features.depth:
            self.required_blocks(features.depth)  # raises the "layers > depth" error
        maps = [features.block_map(i - self.layers, norm=True) for i in range(self.layers)]
        size = maps[0].shape[-2:]
        # All blocks share the patch grid, so this resize is the identity; it is kept for the
        # official definition ("resize_concat" to the first input's size).
        maps = [
            m
            if m.shape[-2:] == size
            else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps
        ]
        return torch.cat(maps, dim=1)

    def forward(self, features: Features) -> Tensor:
        """Logits (B, K, h, w) on the patch grid of ``features``."""
        x = self.bn(self.input_maps(features).to(self.conv_seg.weight.dtype))
        return self.conv_seg(self.dropout(x))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"layers={self.layers}, dropout={self.dropout_p}"
        )
