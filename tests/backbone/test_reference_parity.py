"""Parity with an independent re-statement of the official forward pass, beyond the fixtures:
non-square and full-size inputs, several depths and widths, registers, masks and SwiGLU."""

from __future__ import annotations

import pytest
import torch

from dinov2_heads import create_backbone
from tests.backbone.reference import final_norm, forward_all
from tests.helpers import randomize

TOL = 1e-5

# (42, 14): a grid one patch wide, where PyTorch's CPU antialiased bicubic gives other numbers
# for the official channels-last table than for a contiguous one.
SIZES = [(224, 224), (126, 252), (252, 126), (518, 518), (98, 532), (14, 14), (42, 14), (14, 42)]


def _build(variant: str, **overrides: object) -> torch.nn.Module:
    return randomize(create_backbone(variant, **overrides), seed=len(overrides))


@pytest.mark.parametrize("variant", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_forward_features_any_size(variant: str, height: int, width: int) -> None:
    model = _build(variant, depth=2, embed_dim=64, num_heads=2)
    cfg = model.config
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    with torch.no_grad():
        out = model.forward_features(x)
        prenorm, _ = forward_all(
            model.state_dict(),
            x,
            heads=2,
            offset=cfg.interpolate_offset,
            antialias=cfg.interpolate_antialias,
        )
    normed = final_norm(model.state_dict(), prenorm)
    r = cfg.num_register_tokens
    n = (height // 14) * (width // 14)
    assert out["x_norm_patchtokens"].shape == (2, n, 64)
    assert out["x_norm_regtokens"].shape == (2, r, 64)
    torch.testing.assert_close(out["x_prenorm"], prenorm, atol=TOL, rtol=0)
    torch.testing.assert_close(out["x_norm_clstoken"], normed[:, 0], atol=TOL, rtol=0)
    torch.testing.assert_close(out["x_norm_regtokens"], normed[:, 1 : 1 + r], atol=TOL, rtol=0)
    torch.testing.assert_close(out["x_norm_patchtokens"], normed[:, 1 + r :], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("depth", "embed_dim", "num_heads", "ffn_layer"),
    [(1, 32, 1, "mlp"), (3, 96, 4, "mlp"), (2, 48, 3, "swiglufused"), (4, 128, 8, "mlp")],
)
def test_depths_widths_and_swiglu(
    depth: int, embed_dim: int, num_heads: int, ffn_layer: str
) -> None:
    model = _build(
        "dinov2_vits14", depth=depth, embed_dim=embed_dim, num_heads=num_heads, ffn_layer=ffn_layer
    )
    x = torch.randn(1, 3, 126, 252, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        out = model.get_intermediate_layers(x, n=depth, return_class_token=True, norm=True)
        _, blocks = forward_all(model.state_dict(), x, heads=num_heads, offset=0.1, antialias=False)
    assert len(out) == depth
    for (patch, cls), expected in zip(out, blocks, strict=True):
        normed = final_norm(model.state_dict(), expected)
        torch.testing.assert_close(patch, normed[:, 1:], atol=TOL, rtol=0)
        torch.testing.assert_close(cls, normed[:, 0], atol=TOL, rtol=0)


def test_full_size_uses_the_table_unchanged() -> None:
    model = _build("dinov2_vits14", depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(1, 3, 518, 518)
    tokens = torch.zeros(1, 1 + 37 * 37, 32)
    assert model.interpolate_pos_encoding(tokens, 518, 518) is model.pos_embed
    # Same patch count but not square is resized, as in the official code.
    assert model.interpolate_pos_encoding(tokens, 518, 532).shape == (1, 1 + 37 * 38, 32)
    with torch.no_grad():
        assert model.forward_features(x)["x_norm_patchtokens"].shape == (1, 37 * 37, 32)


def test_plain_and_register_interpolation_differ() -> None:
    plain = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2)
    reg = create_backbone("dinov2_vits14_reg", depth=1, embed_dim=32, num_heads=2)
    reg.pos_embed.data.copy_(plain.pos_embed.data)
    tokens = torch.zeros(1, 1 + 16 * 16, 32)
    a = plain.interpolate_pos_encoding(tokens, 224, 224)
    b = reg.interpolate_pos_encoding(tokens, 224, 224)
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-4


def test_masks_replace_patches_by_mask_token() -> None:
    model = _build("dinov2_vits14_reg", depth=2, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 56, 84)
    masks = torch.zeros(2, 4 * 6, dtype=torch.bool)
    masks[0, :5] = True
    masks[1, -3:] = True
    with torch.no_grad():
        out = model.forward_features(x, masks=masks)
        prenorm, _ = forward_all(
            model.state_dict(), x, heads=2, offset=0.0, antialias=True, masks=masks
        )
        unmasked = model.forward_features(x)
    torch.testing.assert_close(out["x_prenorm"], prenorm, atol=TOL, rtol=0)
    assert out["masks"] is masks
    assert not torch.allclose(out["x_prenorm"], unmasked["x_prenorm"])


def test_intermediate_layers_selection_reshape_and_norm() -> None:
    model = _build("dinov2_vits14_reg", depth=4, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 70, 112)
    with torch.no_grad():
        _, blocks = forward_all(model.state_dict(), x, heads=2, offset=0.0, antialias=True)
        picked = model.get_intermediate_layers(x, n=[2, 0], norm=False)
        last_two = model.get_intermediate_layers(x, n=2)
        negative = model.get_intermediate_layers(x, n=[-1])
        maps = model.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)
    # Block order, not request order; registers dropped; norm=False gives raw block outputs.
    torch.testing.assert_close(picked[0], blocks[0][:, 5:], atol=TOL, rtol=0)
    torch.testing.assert_close(picked[1], blocks[2][:, 5:], atol=TOL, rtol=0)
    torch.testing.assert_close(
        last_two[0], final_norm(model.state_dict(), blocks[2])[:, 5:], atol=TOL, rtol=0
    )
    torch.testing.assert_close(negative[0], last_two[1], atol=0, rtol=0)
    patch_map, cls = maps[0]
    assert patch_map.shape == (2, 64, 5, 8)
    assert patch_map.is_contiguous()
    torch.testing.assert_close(patch_map.flatten(2).transpose(1, 2), last_two[1], atol=0, rtol=0)
    assert cls.shape == (2, 64)


def test_forward_returns_class_token_or_dict() -> None:
    model = _build("dinov2_vits14", depth=1, embed_dim=32, num_heads=2)
    x = torch.randn(3, 3, 28, 42)
    with torch.no_grad():
        cls = model(x)
        full = model(x, is_training=True)
    assert isinstance(cls, torch.Tensor)
    assert cls.shape == (3, 32)
    assert isinstance(full, dict)
    torch.testing.assert_close(cls, full["x_norm_clstoken"], atol=0, rtol=0)


def test_intermediate_tokens_keep_class_and_register_tokens() -> None:
    model = _build("dinov2_vits14_reg", depth=3, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        _, blocks = forward_all(model.state_dict(), x, heads=2, offset=0.0, antialias=True)
        tokens = model.get_intermediate_tokens(x, n=2)
        raw = model.get_intermediate_tokens(x, n=[0], norm=False)
    assert [t.shape for t in tokens] == [(2, 1 + 4 + 15, 64)] * 2
    for got, expected in zip(tokens, blocks[1:], strict=True):
        torch.testing.assert_close(got, final_norm(model.state_dict(), expected), atol=TOL, rtol=0)
    torch.testing.assert_close(raw[0], blocks[0], atol=TOL, rtol=0)
