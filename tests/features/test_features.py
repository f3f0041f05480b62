"""``Features``: construction from the official tuple, and batch indexing."""

from __future__ import annotations

import pytest
import torch

from dinov2_heads import DinoVisionTransformer, Features, FrozenBackbone


def test_from_official_refuses_outputs_without_class_tokens(tiny: DinoVisionTransformer) -> None:
    # With B = 2 each (B, N, D) tensor has length 2 and once unpacked as a (patch, class) pair.
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        patches_only = tiny.get_intermediate_layers(x, n=2)
        pairs = tiny.get_intermediate_layers(x, n=2, return_class_token=True)
    with pytest.raises(ValueError, match="return_class_token=True"):
        Features.from_official(patches_only)
    features = Features.from_official(pairs)
    assert features.batch_size == 2
    assert features.grid == (4, 4)
    torch.testing.assert_close(features.class_tokens[0], pairs[0][1], atol=0, rtol=0)


def test_int_index_out_of_range(tiny: DinoVisionTransformer) -> None:
    features = FrozenBackbone(tiny)(torch.randn(3, 3, 28, 42))
    assert features[-3].batch_size == 1
    torch.testing.assert_close(features[-3].class_token, features.class_token[:1], atol=0, rtol=0)
    torch.testing.assert_close(features[2].class_token, features.class_token[2:], atol=0, rtol=0)
    for index in (3, -4):
        with pytest.raises(IndexError, match=f"index {index} is out of range for a batch of 3"):
            features[index]
