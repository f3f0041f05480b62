"""Which backbone blocks the depth heads read."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from torch import Tensor

from dinov2_heads.features.features import Features

#: The official hub's four blocks per backbone depth: ViT-S/B (12 blocks), ViT-L (24), ViT-g (40).
OFFICIAL_FOUR_BLOCKS: MappingProxyType[int, tuple[int, ...]] = MappingProxyType(
    {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}
)


def depth_blocks(depth: int, layers: int) -> tuple[int, ...]:
    """Absolute indices of the ``layers`` blocks a depth head reads on a ``depth``-block backbone.

    ``layers=1`` is the last block. Four layers on the official backbones are the hub's
    choice (:data:`OFFICIAL_FOUR_BLOCKS`: ``[2, 5, 8, 11]`` for ViT-S/B, ``[4, 11, 17, 23]``
    for ViT-L, ``[9, 19, 29, 39]`` for ViT-g); any other combination spreads the blocks
    evenly and ends at the last one: ``(k + 1) * depth // layers - 1`` for k = 0 .. layers - 1
    (the same rule gives the ViT-S/B and ViT-g choices).

    Raises:
        ValueError: ``layers`` is not between 1 and ``depth``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"the backbone depth must be a positive int, got {depth!r}")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= depth:
        raise ValueError(
            f"a depth head reads between 1 and {depth} blocks of this {depth}-block backbone, "
            f"got layers={layers!r}; use layers=1 or layers=4 (the official heads)"
        )
    if layers == 4 and depth in OFFICIAL_FOUR_BLOCKS:
        return OFFICIAL_FOUR_BLOCKS[depth]
    return tuple((k + 1) * depth // layers - 1 for k in range(layers))


def depth_head_inputs(
    features: Features, blocks: Sequence[tuple[int, bool]], embed_dim: int, who: str
) -> list[tuple[Tensor, Tensor]]:
    """(patch map (B, D, h, w), class token (B, D)) of each of ``blocks`` in ``features``.

    Raises:
        ValueError: The features were built for another width, or lack one of the blocks (the
            message says how to extract it).
    """
    if features.embed_dim != embed_dim:
        raise ValueError(
            f"{who} was built for D = {embed_dim} but the features have D = "
            f"{features.embed_dim}; build it with embed_dim={features.embed_dim}"
        )
    inputs = []
    for index, norm in blocks:
        class_token, _ = features.block(index, norm=norm)
        inputs.append((features.block_map(index, norm=norm), class_token))
    return inputs


def backbone_depth(features: Features, who: str) -> int:
    """The backbone depth the features came from, or a ``ValueError`` naming the fix."""
    if features.depth is None:
        raise ValueError(
            f"{who} reads chosen blocks and needs the backbone depth, which these Features "
            "do not hold; extract them with FrozenBackbone.for_heads(backbone, head)"
        )
    return features.depth
