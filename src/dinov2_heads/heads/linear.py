"""``LinearHead``: the official DINOv2 linear classifier."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.features.features import Features
from dinov2_heads.heads.class_names import ClassNamesMixin


def linear_input(features: Features, n_blocks: int = 1, avgpool: bool = True) -> Tensor:
    """The official linear-probe input: (B, (n + avgpool) * D) in float32.

    Class tokens of the last ``n_blocks`` blocks, oldest first, then the mean of the last block's
    patch tokens when ``avgpool``: the official ``create_linear_input``. It needs only pooled
    features, so it also runs from a compact cache without patch tokens.

    Args:
        features: At least ``n_blocks`` blocks.
        n_blocks: How many of the last blocks' class tokens to take.
        avgpool: Append ``features.patch_mean``.
    """
    if features.n_blocks < n_blocks:
        raise ValueError(
            f"the head needs the class tokens of the last {n_blocks} blocks but the features "
            f"hold {features.n_blocks}; extract with FrozenBackbone(..., n_last_blocks="
            f"{n_blocks}) or build the head with n_blocks={features.n_blocks}"
        )
    parts = list(features.class_tokens[features.n_blocks - n_blocks :])
    if avgpool:
        parts.append(features.patch_mean)
    return torch.cat(parts, dim=-1).float()


class LinearHead(ClassNamesMixin):
    """The official DINOv2 linear classifier on class tokens and the mean patch token.

    ``(n_blocks + avgpool) * D -> K``. The state dict is exactly ``{"weight", "bias"}``
    (plus ``_extra_state`` when class names are set), so the released ``*_linear_head.pth``
    (``n_blocks=1``) and ``*_linear4_head.pth`` (``n_blocks=4``) files load with
    ``strict=True`` and reproduce the official ImageNet classifier.

    Args:
        embed_dim: D of the backbone.
        num_classes: K.
        n_blocks: Class tokens of how many of the last blocks to use.
        avgpool: Also use the mean of the last block's patch tokens.
        class_names: Optional K names, saved in the state dict and checked on load.

    Example:
        >>> head = LinearHead(384, 1000, n_blocks=4)
        >>> head.weight.shape
        torch.Size([1000, 1920])
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        n_blocks: int = 1,
        avgpool: bool = True,
        class_names: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LinearHead: {name} must be a positive int, got {value!r}")
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
            raise ValueError(f"LinearHead: n_blocks must be a positive int, got {n_blocks!r}")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.n_blocks = n_blocks
        self.avgpool = avgpool
        self.in_features = (n_blocks + int(avgpool)) * embed_dim
        self.weight = nn.Parameter(torch.empty(num_classes, self.in_features))
        self.bias = nn.Parameter(torch.empty(num_classes))
        self.class_names = class_names
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: weight ~ N(0, 0.01), bias 0."""
        nn.init.normal_(self.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.bias)

    def forward(self, features: Features) -> Tensor:
        """Logits (B, K) from ``features`` with at least ``n_blocks`` blocks of width D."""
        if features.embed_dim != self.embed_dim:
            raise ValueError(
                f"LinearHead was built for D = {self.embed_dim} but the features have "
                f"D = {features.embed_dim}; build it with embed_dim={features.embed_dim}"
            )
        x = linear_input(features, self.n_blocks, self.avgpool)
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"n_blocks={self.n_blocks}, avgpool={self.avgpool}"
        )
