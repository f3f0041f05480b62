from __future__ import annotations

import pytest

from dinov2_heads.heads.depth_blocks import OFFICIAL_FOUR_BLOCKS, depth_blocks
from dinov2_heads.heads.dpt_depth import DPTDepthHead
from dinov2_heads.heads.linear_depth import LinearDepthHead


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(12, (2, 5, 8, 11)), (24, (4, 11, 17, 23)), (40, (9, 19, 29, 39))],
)
def test_four_blocks_are_the_hubs(depth: int, expected: tuple[int, ...]) -> None:
    assert depth_blocks(depth, 4) == expected == OFFICIAL_FOUR_BLOCKS[depth]
    assert LinearDepthHead(8, layers=4).required_blocks(depth) == tuple(
        (i, False) for i in expected
    )
    assert DPTDepthHead(8).required_blocks(depth) == tuple((i, False) for i in expected)


@pytest.mark.parametrize("depth", [1, 2, 12, 24, 40])
def test_one_layer_is_the_last_block(depth: int) -> None:
    assert depth_blocks(depth, 1) == (depth - 1,)
    assert LinearDepthHead(8).required_blocks(depth) == ((depth - 1, False),)


def test_other_depths_spread_the_blocks_evenly() -> None:
    assert depth_blocks(4, 4) == (0, 1, 2, 3)
    assert depth_blocks(8, 4) == (1, 3, 5, 7)
    assert depth_blocks(12, 2) == (5, 11)
    # The rule alone reproduces the official ViT-S/B and ViT-g choices.
    for depth in (12, 40):
        assert tuple((k + 1) * depth // 4 - 1 for k in range(4)) == OFFICIAL_FOUR_BLOCKS[depth]


def test_more_layers_than_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and 2 blocks"):
        depth_blocks(2, 4)
    with pytest.raises(ValueError, match="between 1 and 2 blocks"):
        DPTDepthHead(8).required_blocks(2)
    with pytest.raises(ValueError, match="positive int"):
        depth_blocks(0, 1)
