"""``accelerate`` swaps the backbone's modules once, in place, for ones with the same numbers.

The fast computations run only on CUDA; the ``fast_on_cpu`` fixture lets them run on CPU as
well, so that their arithmetic is checked here: the patch embedding as a matrix product, the
position table resized by matrices, LayerScale fused into the residual addition and, in reduced
precision, the first MLP layer with its GELU as one call.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dinov2_heads import FrozenBackbone, create_backbone
from dinov2_heads.accel import (
    FastBlock,
    FastLayerNorm,
    FastMlp,
    FastPatchEmbed,
    FastVisionTransformer,
    accelerate,
    norm_kernels,
)
from dinov2_heads.layers import Block
from tests.accel.conftest import DEVICES, features, spread

_EXPECTED_NAMES = [
    "",
    "patch_embed",
    "blocks.0",
    "blocks.0.norm1",
    "blocks.0.norm2",
    "blocks.0.mlp",
    "blocks.1",
    "blocks.1.norm1",
    "blocks.1.norm2",
    "blocks.1.mlp",
    "norm",
]


def test_accelerate_swaps_each_module_once_and_names_them() -> None:
    model = create_backbone("dinov2_vits14", depth=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    block = model.blocks[0]

    assert accelerate(model) == _EXPECTED_NAMES
    assert accelerate(model) == []  # nothing left to swap

    assert type(model) is FastVisionTransformer
    assert type(model.patch_embed) is FastPatchEmbed
    assert type(model.blocks[1]) is FastBlock
    assert type(model.blocks[1].mlp) is FastMlp
    assert type(model.blocks[1].norm2) is FastLayerNorm
    assert type(model.norm) is FastLayerNorm
    # In place: the same objects, parameters and state dict.
    assert model.blocks[0] is block
    assert all(p is parameters[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    model.load_state_dict(state, strict=True)


def test_accelerate_names_modules_inside_a_larger_model() -> None:
    frozen = FrozenBackbone(create_backbone("dinov2_vits14", depth=2), accelerate=False)
    head = nn.Sequential(nn.LayerNorm(384), nn.Linear(384, 3))
    model = nn.ModuleDict({"frozen": frozen, "head": head})
    assert accelerate(model) == [f"frozen.backbone.{n}".rstrip(".") for n in _EXPECTED_NAMES]
    # A LayerNorm that is not the backbone's is left alone.
    assert type(head[0]) is nn.LayerNorm


def test_subclasses_and_wrappers_are_left_alone() -> None:
    class LoraBlock(Block):
        pass

    model = create_backbone("dinov2_vits14", depth=2)
    model.blocks[0].__class__ = LoraBlock
    names = accelerate(model)
    assert "blocks.0" not in names
    assert type(model.blocks[0]) is LoraBlock
    # Its parts are still swapped: they are plain modules.
    assert {"blocks.0.norm1", "blocks.0.mlp", "blocks.1"} <= set(names)


def test_accelerate_rejects_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"accelerate expects an nn\.Module, got dict"):
        accelerate({"blocks": []})  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitg14"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cpu_an_accelerated_model_is_the_plain_model_bit_for_bit(
    variant: str, dtype: torch.dtype
) -> None:
    model = create_backbone(variant, depth=2, embed_dim=64, num_heads=2).eval().to(dtype)
    spread(model)
    images = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0)).to(dtype)
    want = features(model, images)
    assert accelerate(model)
    got = features(model, images)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("size", [(224, 224), (126, 252), (42, 14)])
def test_fast_computations_match_the_plain_model_in_float32(
    fast_on_cpu: None, no_tf32: None, device: str, variant: str, size: tuple[int, int]
) -> None:
    model = create_backbone(variant, depth=2, img_size=518).eval()
    spread(model)
    model.to(device)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    want = features(model, images)
    accelerate(model)
    got = features(model, images)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


def test_each_fast_computation_replaces_the_plain_one(
    fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_backbone("dinov2_vits14", depth=1, img_size=518).eval()
    calls: dict[str, int] = {"conv": 0, "interpolate": 0, "addcmul": 0}
    conv, interpolate, addcmul = (
        torch.nn.functional.conv2d,
        torch.nn.functional.interpolate,
        torch.addcmul,
    )

    def counting(name: str, function: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return function(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting("conv", conv))
    monkeypatch.setattr(torch.nn.functional, "interpolate", counting("interpolate", interpolate))
    monkeypatch.setattr(torch, "addcmul", counting("addcmul", addcmul))
    images = torch.randn(1, 3, 28, 42)
    features(model, images)
    assert calls == {"conv": 1, "interpolate": 1, "addcmul": 0}
    accelerate(model)
    features(model, images)
    # Without Triton both residual additions are torch.addcmul; with it, Triton kernels.
    fused = 0 if norm_kernels.kernels_available(images) else 2
    assert calls == {"conv": 1, "interpolate": 1, "addcmul": fused}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_through_an_accelerated_model_match_the_plain_model(
    fast_on_cpu: None, no_tf32: None, device: str, dtype: torch.dtype
) -> None:
    # Fine-tuning an accelerated model on a GPU runs its fast modules with autograd recording:
    # every fast kernel must either have a backward or step aside for PyTorch's operation.
    plain = create_backbone("dinov2_vits14", depth=2, img_size=518)
    spread(plain)
    plain.to(device)
    images = torch.randn(2, 3, 56, 42, generator=torch.Generator().manual_seed(0)).to(device)

    def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model.forward_features(images.to(model.cls_token.dtype))  # type: ignore[operator]
        loss = out["x_norm_clstoken"].float().square().sum() + out["x_norm_patchtokens"].sum()
        loss.backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients(plain)  # float32
    plain.to(dtype)
    fast = copy.deepcopy(plain)
    assert accelerate(fast)
    want, got = gradients(plain), gradients(fast)
    assert got.keys() == want.keys() == reference.keys()
    assert len(got) == len(list(fast.parameters())) - 1  # all but mask_token
    for name, ref in reference.items():
        if dtype == torch.float32:
            torch.testing.assert_close(got[name], ref, rtol=1e-4, atol=1e-5, msg=name)
            continue
        # In bf16 both round differently; the fast modules' gradients must be as close to the
        # float32 ones as the plain model's.
        fast_cos = torch.nn.functional.cosine_similarity(got[name].flatten(), ref.flatten(), 0)
        plain_cos = torch.nn.functional.cosine_similarity(want[name].flatten(), ref.flatten(), 0)
        assert fast_cos > min(0.98, plain_cos - 0.01), (name, float(fast_cos), float(plain_cos))


_FUSED_MODULES = [
    "patch_embed.proj",
    "blocks.0.norm1",
    "blocks.0.ls1",
    "blocks.0.norm2",
    "blocks.0.mlp.fc1",
    "blocks.0.mlp.act",
    "blocks.0.ls2",
    "norm",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hooks_on_fused_modules_still_run(fast_on_cpu: None, dtype: torch.dtype) -> None:
    # The fast modules compute some submodules' outputs from their parameters; a forward hook
    # on one of them (feature extraction, interpretability tools) must still see and change its
    # output, whether it was registered before accelerate (it is kept) or after.
    model = create_backbone("dinov2_vits14", depth=1, img_size=518).eval()
    spread(model)
    model.to(dtype)
    calls: list[str] = []

    def hook(name: str) -> object:
        def halve(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return output * 0.5

        return halve

    before, after = _FUSED_MODULES[::2], _FUSED_MODULES[1::2]
    for name in before:
        model.get_submodule(name).register_forward_hook(hook(name))  # type: ignore[arg-type]
    plain = copy.deepcopy(model)
    accelerate(model)
    for name in after:
        for each in (plain, model):
            each.get_submodule(name).register_forward_hook(hook(name))  # type: ignore[arg-type]
    images = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0)).to(dtype)
    want = features(plain, images)
    assert sorted(calls) == sorted(_FUSED_MODULES)
    calls.clear()
    got = features(model, images)
    assert sorted(calls) == sorted(_FUSED_MODULES)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=tolerance, atol=tolerance, msg=key)


def _shift_outputs(module: nn.Module) -> None:
    # Turn the module into a subclass whose forward adds 0.5, as a LoRA or quantised wrapper
    # changes what a layer computes while keeping its weight and bias attributes.
    base = type(module)

    def forward(self: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return base.forward(self, *args) + 0.5

    module.__class__ = type(f"Shifted{base.__name__}", (base,), {"forward": forward})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_submodules_replaced_after_accelerate_are_honoured(
    fast_on_cpu: None, dtype: torch.dtype
) -> None:
    model = create_backbone("dinov2_vits14", depth=1, img_size=518).eval()
    spread(model)
    model.to(dtype)
    images = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0)).to(dtype)
    unchanged = features(model, images)
    plain = copy.deepcopy(model)
    accelerate(model)
    for each in (plain, model):
        for name in _FUSED_MODULES:
            if name != "blocks.0.mlp.act":
                _shift_outputs(each.get_submodule(name))
        each.blocks[0].mlp.act = nn.ReLU()
    want = features(plain, images)
    got = features(model, images)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=tolerance, atol=tolerance, msg=key)
    # The replacements changed the result: they were not skipped.
    for key in ("x_norm_clstoken", "x_norm_patchtokens"):
        assert not torch.allclose(want[key], unchanged[key], rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------- FrozenBackbone


def test_frozen_backbone_on_cpu_keeps_the_plain_modules() -> None:
    frozen = FrozenBackbone(create_backbone("dinov2_vits14", depth=1))
    frozen(torch.randn(1, 3, 28, 28))
    assert not any(type(m).__name__.startswith("Fast") for m in frozen.modules())


def test_frozen_backbone_accelerates_on_its_first_gpu_batch(fast_on_cpu: None) -> None:
    # fast_on_cpu makes CPU stand for CUDA here.
    backbone = create_backbone("dinov2_vits14", depth=2, embed_dim=64, num_heads=2).eval()
    spread(backbone)
    images = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    plain = FrozenBackbone(copy.deepcopy(backbone), accelerate=False)
    want = plain(images)
    assert type(plain.backbone) is type(backbone)
    frozen = FrozenBackbone(backbone)
    assert type(frozen.backbone) is type(backbone)  # nothing swapped before the first batch
    got = frozen(images)
    assert type(frozen.backbone) is FastVisionTransformer
    assert type(frozen.backbone.blocks[1]) is FastBlock
    assert list(frozen.state_dict()) == list(plain.state_dict())
    torch.testing.assert_close(got.patch_tokens[0], want.patch_tokens[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.class_tokens[0], want.class_tokens[0], rtol=1e-5, atol=1e-5)


def test_frozen_backbone_rejects_a_non_bool_accelerate() -> None:
    with pytest.raises(TypeError, match="accelerate must be True or False, got 'yes'"):
        FrozenBackbone(create_backbone("dinov2_vits14", depth=1), accelerate="yes")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_a_compiled_frozen_backbone_keeps_the_plain_modules(fast_on_cpu: None) -> None:
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=2)
    frozen = FrozenBackbone(backbone, compile={"backend": "eager"})
    frozen(torch.randn(2, 3, 28, 28))
    assert not any(type(m).__name__.startswith("Fast") for m in frozen.modules())
