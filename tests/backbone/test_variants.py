"""Variants, configuration and the model built without weights."""

from __future__ import annotations

import pytest
import torch

import dinov2_heads.backbone
from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.backbone import BackboneConfig, list_variants

PARAMETER_COUNTS = {
    "dinov2_vits14": 22_056_576,
    "dinov2_vitb14": 86_580_480,
    "dinov2_vitl14": 304_368_640,
    "dinov2_vitg14": 1_136_480_768,
    "dinov2_vits14_reg": 22_058_112,
    "dinov2_vitb14_reg": 86_583_552,
    "dinov2_vitl14_reg": 304_372_736,
    "dinov2_vitg14_reg": 1_136_486_912,
}


@pytest.mark.parametrize(("name", "count"), PARAMETER_COUNTS.items())
def test_parameter_counts_on_meta(name: str, count: int) -> None:
    model = create_backbone(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.pos_embed.is_meta
    assert model.variant == name


def test_list_variants_and_hub_builders() -> None:
    assert list_variants() == list(PARAMETER_COUNTS)
    for name in list_variants():
        builder = getattr(dinov2_heads, name)
        assert builder.__name__ == name
        assert name in (builder.__doc__ or "")


def test_official_parameter_names() -> None:
    model = create_backbone("dinov2_vitg14_reg", depth=1, device="meta")
    assert sorted(model.state_dict()) == sorted(
        [
            "cls_token",
            "pos_embed",
            "register_tokens",
            "mask_token",
            "patch_embed.proj.weight",
            "patch_embed.proj.bias",
            "norm.weight",
            "norm.bias",
        ]
        + [
            f"blocks.0.{part}"
            for part in [
                "norm1.weight",
                "norm1.bias",
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.proj.weight",
                "attn.proj.bias",
                "ls1.gamma",
                "norm2.weight",
                "norm2.bias",
                "mlp.w12.weight",
                "mlp.w12.bias",
                "mlp.w3.weight",
                "mlp.w3.bias",
                "ls2.gamma",
            ]
        ]
    )
    # The official fused SwiGLU rounds 2/3 of 4 * 1536 to a multiple of 8: 4096.
    assert model.blocks[0].mlp.w3.in_features == 4096
    assert model.mask_token.shape == (1, 1536)


def test_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="dinov2_vits14, dinov2_vitb14") as info:
        create_backbone("dinov2_vits16")
    assert "dinov2_vits16" in str(info.value)


def test_overrides_and_unknown_override() -> None:
    model = create_backbone("dinov2_vitb14", depth=2, img_size=224)
    assert len(model.blocks) == 2
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 768)
    assert model.variant is None  # a custom depth
    # The stored position grid does not change the variant.
    assert create_backbone("dinov2_vitb14", img_size=224, device="meta").variant == "dinov2_vitb14"
    with pytest.raises(TypeError, match="unknown backbone setting"):
        create_backbone("dinov2_vits14", dept=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 100, "num_heads": 3}, "not divisible"),
        ({"ffn_layer": "moe"}, "ffn_layer"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"img_size": 500}, "not a multiple of patch_size"),
        ({"num_register_tokens": -1}, "num_register_tokens"),
    ],
)
def test_invalid_configs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**overrides)  # type: ignore[arg-type]


def test_register_variants_use_official_interpolation_settings() -> None:
    plain = dinov2_heads.backbone.get_config("dinov2_vitl14")
    reg = dinov2_heads.backbone.get_config("dinov2_vitl14_reg")
    assert (plain.interpolate_offset, plain.interpolate_antialias) == (0.1, False)
    assert (reg.interpolate_offset, reg.interpolate_antialias) == (0.0, True)
    assert reg.num_register_tokens == 4
    # Both settings are constructor arguments.
    model = DinoVisionTransformer(plain, depth=1, interpolate_offset=0.0)
    assert model.interpolate_offset == 0.0


def test_gradients_reach_every_parameter() -> None:
    model = create_backbone("dinov2_vits14_reg", depth=2, embed_dim=32, num_heads=2).train()
    x = torch.randn(2, 3, 28, 56)
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks[:, 0] = True
    out = model.forward_features(x, masks=masks)
    (out["x_norm_clstoken"].sum() + out["x_norm_patchtokens"].square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_low_precision_weights_run() -> None:
    model = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2)
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 42, 28, dtype=torch.bfloat16))
    assert out["x_norm_patchtokens"].dtype == torch.bfloat16
    assert torch.isfinite(out["x_norm_patchtokens"].float()).all()
