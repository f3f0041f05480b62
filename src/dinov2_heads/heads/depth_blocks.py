"""Which backbone blocks the depth heads read."""

from __future__ import annotations

from types import MappingProxyType

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
