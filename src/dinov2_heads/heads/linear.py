"""``LinearHead``: the official DINOv2 linear classifier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Self

from dinov2_heads.features.features import Features
from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.config import config_arguments


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

    It reads :class:`Features`, or the official classifier's own input: a plain tensor
    (B, in_features) such as ``create_linear_input`` of the official code gives.

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
        >>> LinearHead(384, 3)(torch.randn(2, 768)).shape  # class token + mean patch token
        torch.Size([2, 3])
    """

    #: The ``Features`` fields it reads: a feature store read for it
    #: (``FeatureDataset(store, heads=head)``) reads no patch tokens or chosen blocks.
    feature_parts: ClassVar[tuple[str, ...]] = ("class_tokens", "patch_mean")

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
        if not isinstance(avgpool, bool):
            raise TypeError(f"LinearHead: avgpool must be True or False, got {avgpool!r}")
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

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-able: ``LinearHead.from_config`` rebuilds the head."""
        return {
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "n_blocks": self.n_blocks,
            "avgpool": self.avgpool,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """A new head (fresh weights) from :meth:`config`'s output."""
        return cls(**config_arguments(cls, config))

    def forward(self, features: Features | Tensor) -> Tensor:
        """Logits (B, K).

        Args:
            features: :class:`Features` with at least ``n_blocks`` blocks of width D, or the
                official linear input (B, in_features), ``in_features = (n_blocks + avgpool) * D``:
                the class tokens of the last ``n_blocks`` blocks, oldest first, then the mean
                patch token when ``avgpool``.
        """
        if isinstance(features, Tensor):
            x = self._check_tensor(features)
        elif isinstance(features, Features):
            if features.embed_dim != self.embed_dim:
                raise ValueError(
                    f"LinearHead was built for D = {self.embed_dim} but the features have "
                    f"D = {features.embed_dim}; build it with embed_dim={features.embed_dim}"
                )
            x = linear_input(features, self.n_blocks, self.avgpool)
        else:
            raise TypeError(
                f"LinearHead reads Features or a (B, {self.in_features}) tensor, got a "
                f"{type(features).__name__}; pass FrozenBackbone(backbone)(images)"
            )
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def _check_tensor(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(f"LinearHead reads float features, got a tensor of {x.dtype}")
        if x.ndim == 2 and x.shape[1] == self.in_features:
            return x
        tokens = (
            f"the class tokens of the last {self.n_blocks} blocks"
            if self.n_blocks > 1
            else "the class token"
        ) + (", then the mean patch token" if self.avgpool else "")
        message = (
            f"LinearHead reads a (B, {self.in_features}) tensor ({tokens}, each of width "
            f"{self.embed_dim}), got {tuple(x.shape)}"
        )
        width = x.shape[-1] if x.ndim == 2 else 0
        fitting_blocks = width // self.embed_dim - int(self.avgpool)
        if width % self.embed_dim == 0 and fitting_blocks >= 1:
            message += (
                f"; that width fits LinearHead({self.embed_dim}, {self.num_classes}, "
                f"n_blocks={fitting_blocks}, avgpool={self.avgpool})"
            )
        raise ValueError(message)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"n_blocks={self.n_blocks}, avgpool={self.avgpool}"
        )
