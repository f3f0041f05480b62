"""Attention maps: the probabilities the block really uses, split by token kind, summing to 1."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from dinov2_heads.checkpoints import create_backbone
from dinov2_heads.features import FrozenBackbone, attention_maps, class_attention
from tests.helpers import randomize


@pytest.fixture(params=["dinov2_vits14", "dinov2_vits14_reg"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return randomize(create_backbone(request.param, depth=3, embed_dim=48, num_heads=4))


def test_probabilities_sum_to_one_over_all_tokens(model: nn.Module) -> None:
    images = torch.randn(2, 3, 28, 42)
    result = class_attention(model, images, block=1)
    r = model.num_register_tokens
    assert result.patches.shape == (2, 4, 2, 3)
    assert result.to_registers.shape == (2, 4, r)
    assert result.to_class.shape == (2, 4)
    total = result.patches.sum(dim=(2, 3)) + result.to_registers.sum(dim=2) + result.to_class
    torch.testing.assert_close(total, torch.ones(2, 4))
    assert result.patches.ge(0).all()
    if r:
        # Registers take part of the softmax and are left out of the map, not renormalised.
        assert result.to_registers.sum() > 0
        assert result.patches.sum(dim=(2, 3)).lt(1).all()


def test_the_probabilities_reproduce_the_blocks_attention_output(model: nn.Module) -> None:
    images = torch.randn(1, 3, 28, 28)
    result = class_attention(model, images, block=-1)
    assert result.block == 2
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(images)
        for block in model.blocks[:2]:
            tokens = block(tokens)
        layer = model.blocks[2]
        expected = layer.attn(layer.norm1(tokens))[:, 0]  # the class token's attention output
        qkv = rearrange(
            layer.attn.qkv(layer.norm1(tokens)), "b t (three n e) -> three b n t e", three=3, n=4
        )
        r = model.num_register_tokens
        probabilities = torch.cat(
            [
                result.to_class[..., None],
                result.to_registers,
                rearrange(result.patches, "b n h w -> b n (h w)"),
            ],
            dim=-1,
        )
        mixed = torch.einsum("bnt,bnte->bne", probabilities, qkv[2])
        rebuilt = layer.attn.proj(rearrange(mixed, "b n e -> b (n e)"))
    assert probabilities.shape[-1] == 1 + r + 4
    torch.testing.assert_close(rebuilt, expected, rtol=1e-5, atol=1e-5)


def test_frozen_backbone_and_block_choice(model: nn.Module) -> None:
    images = torch.randn(1, 3, 28, 28)
    frozen = FrozenBackbone(model)
    assert torch.equal(attention_maps(frozen, images), attention_maps(model, images, block=2))
    assert not torch.equal(attention_maps(model, images, block=0), attention_maps(model, images))


def test_bad_input(model: nn.Module) -> None:
    images = torch.randn(1, 3, 28, 28)
    with pytest.raises(ValueError, match="block must be"):
        attention_maps(model, images, block=3)
    with pytest.raises(ValueError, match="block must be"):
        attention_maps(model, images, block=-4)
    with pytest.raises(TypeError, match="DinoVisionTransformer"):
        attention_maps(nn.Linear(2, 2), images)
    with pytest.raises(ValueError, match="multiple"):
        attention_maps(model, torch.randn(1, 3, 27, 28))


def test_images_that_are_not_a_tensor_or_not_finite_are_refused() -> None:
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1)
    image = torch.randn(3, 28, 28)
    for given in (image[None].numpy(), [image]):
        with pytest.raises(TypeError, match=r"expected images as a \(B, 3, H, W\) tensor, got"):
            attention_maps(backbone, given)  # type: ignore[arg-type]
    broken = image[None].clone()
    broken[0, 1, 5, 5] = float("nan")
    for wrapped in (backbone, FrozenBackbone(backbone)):
        with pytest.raises(ValueError, match="the images hold NaN or inf values"):
            attention_maps(wrapped, broken)
    # Finite images still give finite maps.
    assert torch.isfinite(attention_maps(backbone, image[None])).all()
