"""Centre padding against the official ``CenterPadding`` (notebook and hub) definition."""

from __future__ import annotations

import pytest
import torch

from dinov2_heads.dense import center_pad, center_pad_amounts, center_padding
from tests.dense.official import official_center_padding


@pytest.mark.parametrize(("height", "width"), [(14, 14), (15, 27), (224, 225), (13, 1), (100, 41)])
def test_equals_the_official_padding(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    padded = center_pad(x)
    expected = official_center_padding(x, 14)
    assert padded.shape == expected.shape
    assert padded.shape[-2] % 14 == 0
    assert padded.shape[-1] % 14 == 0
    assert torch.equal(padded, expected)


def test_amounts() -> None:
    assert center_pad_amounts(224, 14) == (0, 0)
    assert center_pad_amounts(225, 14) == (6, 7)  # 13 pixels: the smaller half first
    assert center_pad_amounts(226, 14) == (6, 6)
    assert center_pad_amounts(1, 14) == (6, 7)
    assert center_padding(15, 28, 14) == (0, 0, 6, 7)


def test_unchanged_when_already_a_multiple() -> None:
    x = torch.randn(1, 3, 28, 42)
    assert center_pad(x) is x


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        center_pad(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="positive int"):
        center_pad_amounts(0, 14)
    with pytest.raises(ValueError, match="multiple must be a positive int"):
        center_pad(torch.randn(1, 3, 28, 28), multiple=0)
