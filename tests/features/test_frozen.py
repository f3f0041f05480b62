from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.features import Features, FrozenBackbone
from tests.features.conftest import tiny_backbone


class OfficialLike(nn.Module):
    """Not our class: only the official get_intermediate_layers interface and attributes."""

    def __init__(self, inner: DinoVisionTransformer) -> None:
        super().__init__()
        self.inner = inner
        self.embed_dim = inner.embed_dim
        self.patch_size = inner.patch_size

    def get_intermediate_layers(self, x: Tensor, n: int = 1, **kwargs: Any) -> tuple[Any, ...]:
        return self.inner.get_intermediate_layers(x, n, **kwargs)


def images(batch: int = 2, height: int = 28, width: int = 42, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- outputs


@pytest.mark.parametrize("n", [1, 2])
def test_features_equal_get_intermediate_layers(tiny: DinoVisionTransformer, n: int) -> None:
    x = images()
    features = FrozenBackbone(tiny, n_last_blocks=n)(x)
    with torch.no_grad():
        official = tiny.get_intermediate_layers(x, n, return_class_token=True)
    assert isinstance(features, Features)
    assert features.n_blocks == n
    assert features.grid == (2, 3)
    assert features.register_tokens is None
    assert features.patch_tokens is not None
    for i, (patches, cls) in enumerate(official):
        assert torch.equal(features.class_tokens[i], cls)
        assert torch.equal(features.patch_tokens[i], patches)
    assert torch.allclose(features.patch_mean, official[-1][0].mean(dim=1))
    assert features.class_token.dtype == torch.float32


def test_register_tokens_are_kept(tiny_reg: DinoVisionTransformer) -> None:
    x = images()
    features = FrozenBackbone(tiny_reg, n_last_blocks=2)(x)
    with torch.no_grad():
        reference = tiny_reg.forward_features(x)
        official = tiny_reg.get_intermediate_layers(x, 2, return_class_token=True)
    assert features.register_tokens is not None
    assert features.register_tokens.shape == (2, 4, 64)
    assert torch.equal(features.register_tokens, reference["x_norm_regtokens"])
    assert features.patch_tokens is not None
    assert torch.equal(features.patch_tokens[-1], reference["x_norm_patchtokens"])
    assert torch.equal(features.class_tokens[0], official[0][1])


def test_any_module_with_the_official_interface(tiny_reg: DinoVisionTransformer) -> None:
    x = images()
    ours = FrozenBackbone(tiny_reg, n_last_blocks=2)(x)
    theirs = FrozenBackbone(OfficialLike(tiny_reg), n_last_blocks=2)(x)
    assert theirs.register_tokens is None  # the official method drops them
    assert theirs.patch_tokens is not None
    assert ours.patch_tokens is not None
    for a, b in zip(ours.patch_tokens, theirs.patch_tokens, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ours.patch_mean, theirs.patch_mean)


def test_matches_official_reference_outputs(fixtures_dir: Path) -> None:
    ref = torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)
    for name, registers in (("vits14_d2", 0), ("vits14_reg4_d2", 4)):
        state_dict = torch.load(fixtures_dir / f"{name}.pth", weights_only=True)
        backbone = create_backbone(
            "dinov2_vits14_reg" if registers else "dinov2_vits14", depth=2, device="meta"
        )
        frozen = FrozenBackbone(backbone, n_last_blocks=2)
        frozen.load_state_dict(state_dict, strict=True, assign=True)
        features = frozen(ref["input"])
        assert features.patch_tokens is not None
        for i in range(2):
            expected_cls = ref[f"{name}/get_intermediate_layers_n2/{i}/cls"]
            expected_patch = ref[f"{name}/get_intermediate_layers_n2/{i}/patch"]
            assert (features.class_tokens[i] - expected_cls).abs().max() < 1e-5
            assert (features.patch_tokens[i] - expected_patch).abs().max() < 1e-5
        if registers:
            assert features.register_tokens is not None
            expected = ref[f"{name}/forward_features/x_norm_regtokens"]
            assert (features.register_tokens - expected).abs().max() < 1e-5


# ---------------------------------------------------------------------- frozen, eval, autograd


class Probe(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.frozen = FrozenBackbone(backbone)
        self.head = nn.Linear(64, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.frozen(x).class_token)


def test_parameters_frozen_and_eval_whatever_the_parent_does(tiny: DinoVisionTransformer) -> None:
    tiny.train()
    probe = Probe(tiny)
    assert all(not p.requires_grad for p in probe.frozen.parameters())
    probe.train()
    assert probe.training
    assert probe.head.training
    assert not probe.frozen.training
    assert all(not m.training for m in probe.frozen.modules())
    assert probe.frozen.train() is probe.frozen
    assert not probe.frozen.training


def test_outputs_feed_an_optimizer_step(tiny: DinoVisionTransformer) -> None:
    probe = Probe(tiny)
    frozen_before = {k: v.clone() for k, v in probe.frozen.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    features = probe.frozen(images())
    assert not features.class_token.is_inference()
    assert not features.class_token.requires_grad
    loss = nn.functional.cross_entropy(probe.head(features.class_token), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    assert probe.head.weight.grad is not None
    assert probe.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in probe.frozen.parameters())
    for key, value in probe.frozen.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key


def test_no_grad_even_when_the_input_requires_grad(tiny: DinoVisionTransformer) -> None:
    x = images().requires_grad_(True)
    features = FrozenBackbone(tiny)(x)
    assert not features.class_token.requires_grad


# ---------------------------------------------------------------------- state dict


def test_state_dict_keys_are_the_backbones_own(tiny_reg: DinoVisionTransformer) -> None:
    expected = tiny_reg.state_dict()
    frozen = FrozenBackbone(tiny_reg)
    state_dict = frozen.state_dict()
    assert list(state_dict) == list(expected)
    assert "register_tokens" in state_dict

    other = FrozenBackbone(tiny_backbone(registers=4, seed=5))
    other.load_state_dict(state_dict, strict=True)
    x = images()
    assert torch.equal(other(x).class_token, frozen(x).class_token)


def test_nested_state_dict_round_trip(tiny: DinoVisionTransformer) -> None:
    probe = Probe(tiny)
    state_dict = probe.state_dict()
    assert "frozen.blocks.0.norm1.weight" in state_dict
    assert "frozen.pos_embed" in state_dict
    assert not any(key.startswith("frozen.backbone.") for key in state_dict)
    fresh = Probe(tiny_backbone(seed=7))
    fresh.load_state_dict(state_dict, strict=True)
    x = images()
    assert torch.equal(fresh(x), probe(x))


def test_strict_load_reports_foreign_keys(tiny: DinoVisionTransformer) -> None:
    frozen = FrozenBackbone(tiny)
    state_dict = dict(tiny.state_dict())
    state_dict["backbone.norm.weight"] = state_dict.pop("norm.weight")
    with pytest.raises(RuntimeError, match=r"norm\.weight"):
        frozen.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------------- dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage(tiny: DinoVisionTransformer, dtype: torch.dtype) -> None:
    x = images()
    reference = FrozenBackbone(tiny_backbone())(x)
    frozen = FrozenBackbone(tiny, dtype=dtype)
    assert frozen.dtype == dtype
    assert all(p.dtype == dtype for p in frozen.parameters())
    features = frozen(x)
    assert features.class_token.dtype == torch.float32
    assert features.patch_mean.dtype == torch.float32
    assert features.patch_tokens is not None
    assert features.patch_tokens[0].dtype == torch.float32
    error = (features.patch_mean - reference.patch_mean).abs().max()
    assert 0 < error < 0.1 * reference.patch_mean.abs().max()
    # official fp32 weights load into the low-precision copy
    frozen.load_state_dict(tiny_backbone().state_dict(), strict=True)
    assert frozen.dtype == dtype


# ---------------------------------------------------------------------- errors and attributes


def test_attributes(tiny_reg: DinoVisionTransformer) -> None:
    frozen = FrozenBackbone(tiny_reg, n_last_blocks=2)
    assert frozen.backbone is tiny_reg
    assert (frozen.embed_dim, frozen.patch_size, frozen.n_last_blocks) == (64, 14, 2)
    assert frozen.num_register_tokens == 4
    assert frozen.dtype == torch.float32
    assert "n_last_blocks=2" in repr(frozen)


def test_bad_arguments(tiny: DinoVisionTransformer) -> None:
    with pytest.raises(TypeError, match="get_intermediate_layers"):
        FrozenBackbone(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="between 1 and the depth 2"):
        FrozenBackbone(tiny, n_last_blocks=3)
    with pytest.raises(ValueError, match="between 1"):
        FrozenBackbone(tiny, n_last_blocks=0)
    with pytest.raises(TypeError, match="n_last_blocks"):
        FrozenBackbone(tiny, n_last_blocks=True)
    with pytest.raises(ValueError, match="dtype"):
        FrozenBackbone(tiny, dtype=torch.int8)
    with pytest.raises(TypeError, match="compile"):
        FrozenBackbone(tiny, compile="yes")  # type: ignore[arg-type]


def test_bad_inputs(tiny: DinoVisionTransformer) -> None:
    frozen = FrozenBackbone(tiny)
    with pytest.raises(ValueError, match="unsqueeze"):
        frozen(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="multiple of patch size 14"):
        frozen(torch.randn(1, 3, 30, 28))
    # Integers other than uint8 pixels are not silently cast to float (uint8: test_pixels.py).
    for dtype in (torch.int64, torch.int16, torch.bool):
        with pytest.raises(TypeError, match=rf"or uint8 images \(decoded pixels 0\.\.255.*{dtype}"):
            frozen(torch.zeros(1, 3, 28, 28, dtype=dtype))
