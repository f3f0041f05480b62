"""``Conv1dNeck``: the blog's Conv1d neck over the patch tokens, with its bugs fixed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import Self

from dinov2_heads.features.features import Features
from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.config import config_arguments
from dinov2_heads.heads.inputs import require_features


class ConvBlock(nn.Module):
    """``ReLU(BatchNorm1d(Conv1d(N, N, kernel_size=1, bias=False)(x)))`` on (B, N, D).

    The N patch tokens are the channels and D is the length, so the 1x1 convolution mixes
    patches (each output token is a learned weighted sum of all input tokens) and leaves the
    feature dimension alone. Keys ``conv.weight`` and ``bn.*``, as in the blog's ``Conv``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.act(self.bn(self.conv(x)))


class Conv1dNeck(ClassNamesMixin):
    """The blog's neck: two patch-mixing Conv1d blocks, then a linear layer.

    On the last block's patch tokens p (B, N, D) and class token c (B, D)::

        p = Dropout(block2(block1(p)))
        logits = Linear(2D, K)(cat([p.mean(dim=1), c], dim=-1))   # mean first, class second

    The state dict keys are the blog's (``conv1.conv.weight``, ``conv1.bn.*``,
    ``conv2.conv.weight``, ``conv2.bn.*``, ``linear.weight``, ``linear.bias``), so heads
    trained with the blog code load unchanged and give the same outputs in eval mode. The
    convolutions have one channel per patch, so the neck works for one grid only.

    Args:
        num_patches: N = h * w of the images it is trained on, or the grid (h, w) itself; with
            a grid, a transposed grid of the same N is refused too.
        embed_dim: D of the backbone.
        num_classes: K.
        dropout: Dropout on the mixed patch tokens while training.
        class_names: Optional K names, saved in the state dict and checked on load.

    Example:
        >>> neck = Conv1dNeck((9, 18), 384, 178)  # 126x252 crops, ViT-S/14
        >>> neck.num_patches
        162
    """

    #: The ``Features`` fields it reads (the last block's patch tokens and class token): a
    #: feature store read for it (``FeatureDataset(store, heads=head)``) reads no register
    #: tokens or chosen blocks.
    feature_parts: ClassVar[tuple[str, ...]] = ("class_tokens", "patch_tokens")

    def __init__(
        self,
        num_patches: int | tuple[int, int],
        embed_dim: int,
        num_classes: int,
        *,
        dropout: float = 0.5,
        class_names: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        grid: tuple[int, int] | None = None
        if isinstance(num_patches, tuple):
            if len(num_patches) != 2 or not all(_positive_int(v) for v in num_patches):
                raise ValueError(
                    f"Conv1dNeck: a grid must be (h, w) positive ints, got {num_patches}"
                )
            grid = (num_patches[0], num_patches[1])
            num_patches = grid[0] * grid[1]
        for name, value in (
            ("num_patches", num_patches),
            ("embed_dim", embed_dim),
            ("num_classes", num_classes),
        ):
            if not _positive_int(value):
                raise ValueError(f"Conv1dNeck: {name} must be a positive int, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise TypeError(f"Conv1dNeck: dropout must be a number, got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Conv1dNeck: dropout must be in [0, 1), got {dropout}")
        self.num_patches = num_patches
        self.grid = grid
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.conv1 = ConvBlock(num_patches)
        self.conv2 = ConvBlock(num_patches)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * embed_dim, num_classes)
        self.class_names = class_names
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear weight ~ N(0, 0.01) and bias 0 as in the blog; PyTorch defaults elsewhere."""
        for block in (self.conv1, self.conv2):
            block.conv.reset_parameters()
            block.bn.reset_parameters()
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able: ``Conv1dNeck.from_config`` rebuilds the neck.

        ``num_patches`` is the grid ``[h, w]`` when the neck was built with one, else N.
        """
        return {
            "num_patches": list(self.grid) if self.grid is not None else self.num_patches,
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "dropout": self.drop.p,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A new neck (fresh weights) from :meth:`config`'s output (a grid may be a list)."""
        arguments = config_arguments(cls, config)
        if isinstance(arguments["num_patches"], list):  # JSON has no tuples
            arguments["num_patches"] = tuple(arguments["num_patches"])
        return cls(**arguments)

    def forward(self, features: Features) -> Tensor:
        """Logits (B, K) from the last block's N patch tokens and class token."""
        features = require_features(features, "Conv1dNeck")
        patches = features.require_patch_tokens("Conv1dNeck")[-1]
        self._check_grid(features)
        dtype = self.linear.weight.dtype
        p = self.drop(self.conv2(self.conv1(patches.to(dtype))))  # (B, N, D)
        pooled = torch.cat([p.mean(dim=1), features.class_token.to(dtype)], dim=-1)  # (B, 2D)
        return self.linear(pooled)

    def _check_grid(self, features: Features) -> None:
        h, w = features.grid
        if features.embed_dim != self.embed_dim:
            raise ValueError(
                f"Conv1dNeck was built for D = {self.embed_dim} but the features have "
                f"D = {features.embed_dim}; build it with embed_dim={features.embed_dim}"
            )
        if features.num_patches == self.num_patches and self.grid in (None, features.grid):
            return
        built = (
            f"a {self.grid[0]}x{self.grid[1]} grid ({self.num_patches} patch tokens)"
            if self.grid is not None
            else f"{self.num_patches} patch tokens"
        )
        raise ValueError(
            f"Conv1dNeck was built for {built} but the features come from a {h}x{w} grid "
            f"({h * w} patch tokens); resize the images to the training size or build the neck "
            f"with num_patches=({h}, {w})"
        )

    def extra_repr(self) -> str:
        grid = f"grid={self.grid}, " if self.grid is not None else ""
        return (
            f"{grid}num_patches={self.num_patches}, embed_dim={self.embed_dim}, "
            f"num_classes={self.num_classes}"
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
