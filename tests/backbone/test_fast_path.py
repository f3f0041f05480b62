"""The GPU fast path of the uncompiled forward pass gives the plain path's numbers.

The fast path runs only on CUDA; these tests let it run on CPU as well, so that its arithmetic
is checked here: the patch embedding as a matrix product, the position table resized by
matrices, LayerScale fused into the residual addition and, in reduced precision, the first MLP
layer with its GELU as one call.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from dinov2_heads import create_backbone, plain_kernels
from dinov2_heads.layers import Mlp, fast, norm_kernels


@pytest.fixture
def fast_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "FAST_DEVICE_TYPES", frozenset({"cpu", "cuda"}))


def _spread(model: torch.nn.Module) -> None:
    # LayerScale 1 and zero biases would hide a wrong fusion.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                param.uniform_(0.1, 1.0)


def _features(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model.forward_features(images)  # type: ignore[operator]
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


_DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    # The plain path's convolution would run in TF32 on a GPU by default.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("variant", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("size", [(224, 224), (126, 252), (42, 14)])
def test_fast_path_matches_plain_path_in_float32(
    fast_on_cpu: None, no_tf32: None, device: str, variant: str, size: tuple[int, int]
) -> None:
    model = create_backbone(variant, depth=2, img_size=518).eval()
    _spread(model)
    model.to(device)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    with plain_kernels():
        want = _features(model, images)
    got = _features(model, images)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


def test_each_fast_kernel_runs_on_the_fast_path(
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
    _features(model, images)
    # With the Triton kernels, both residual additions are Triton kernels instead.
    fused = 0 if norm_kernels.kernels_available(images) else 2
    assert calls == {"conv": 0, "interpolate": 0, "addcmul": fused}
    with plain_kernels():
        _features(model, images)
    assert calls == {"conv": 1, "interpolate": 1, "addcmul": fused}


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_mlp_runs_as_one_call_with_the_plain_numbers(
    fast_on_cpu: None,
    no_tf32: None,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    dtype: torch.dtype,
) -> None:
    model = create_backbone("dinov2_vits14", depth=2, img_size=518).eval()
    _spread(model)
    model.to(device)
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0)).to(device)
    with plain_kernels():
        reference = _features(model, images)
    model = model.to(dtype)
    images = images.to(dtype)
    fused = torch._addmm_activation
    calls = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs.get("use_gelu"))
        return fused(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "_addmm_activation", spy)
    got = _features(model, images)
    assert calls == [True, True]
    with plain_kernels():
        plain = _features(model, images)
    assert len(calls) == 2
    for key in ("x_norm_clstoken", "x_norm_patchtokens"):
        want = reference[key]
        fast_error = (got[key].float() - want).norm() / want.norm()
        plain_error = (plain[key].float() - want).norm() / want.norm()
        # Within the rounding of the reduced dtype, and no worse than the plain kernels by much.
        assert fast_error < 3e-2, key
        assert fast_error < 1.5 * plain_error + 1e-3, (key, fast_error, plain_error)


def test_float32_mlp_keeps_the_exact_gelu(
    fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_backbone("dinov2_vits14", depth=1).eval()
    monkeypatch.setattr(torch, "_addmm_activation", None)  # would fail if called
    _features(model, torch.randn(1, 3, 28, 28))


def test_plain_kernels_restores_the_previous_setting(fast_on_cpu: None) -> None:
    x = torch.zeros(1)
    assert fast.fast_path(x)
    with plain_kernels():
        assert not fast.fast_path(x)
        with plain_kernels():
            assert not fast.fast_path(x)
        assert not fast.fast_path(x)
    assert fast.fast_path(x)
    with pytest.raises(RuntimeError), plain_kernels():
        raise RuntimeError("inside")
    assert fast.fast_path(x)


def test_cpu_keeps_the_plain_kernels_by_default() -> None:
    assert not fast.fast_path(torch.zeros(1))


def test_compiled_graphs_keep_the_plain_kernels(fast_on_cpu: None) -> None:
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(fast.fast_path(x))
        return x + 1

    torch.compile(forward, backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen == [False]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_through_the_fast_path_match_the_plain_path(
    fast_on_cpu: None, no_tf32: None, device: str, dtype: torch.dtype
) -> None:
    # Fine-tuning on a GPU runs the fast path with autograd recording: every fast kernel must
    # either have a backward or step aside for PyTorch's operation.
    model = create_backbone("dinov2_vits14", depth=2, img_size=518)
    _spread(model)
    model.to(device)
    images = torch.randn(2, 3, 56, 42, generator=torch.Generator().manual_seed(0)).to(device)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model.forward_features(images.to(model.cls_token.dtype))
        loss = out["x_norm_clstoken"].float().square().sum() + out["x_norm_patchtokens"].sum()
        loss.backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    with plain_kernels():
        reference = gradients()  # float32
    model.to(dtype)
    with plain_kernels():
        plain = gradients()
    got = gradients()
    assert got.keys() == plain.keys() == reference.keys()
    assert len(got) == len(list(model.parameters())) - 1  # all but mask_token
    for name, want in reference.items():
        if dtype == torch.float32:
            torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5, msg=name)
            continue
        # In bf16 both paths round differently; the fast path's gradients must be as close to
        # the float32 ones as the plain path's.
        fast_cos = torch.nn.functional.cosine_similarity(got[name].flatten(), want.flatten(), 0)
        plain_cos = torch.nn.functional.cosine_similarity(plain[name].flatten(), want.flatten(), 0)
        assert fast_cos > min(0.98, plain_cos - 0.01), (name, float(fast_cos), float(plain_cos))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_traced_graphs_keep_the_plain_kernels(fast_on_cpu: None) -> None:
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(fast.fast_path(x))
        return x + 1

    torch.jit.trace(forward, torch.zeros(2), check_trace=False)
    assert seen == [False]


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
def test_hooks_on_the_fused_modules_still_run(fast_on_cpu: None, dtype: torch.dtype) -> None:
    # The fast path computes some modules' outputs from their parameters; a forward hook on one
    # of them (feature extraction, interpretability tools) must still see and change its output.
    model = create_backbone("dinov2_vits14", depth=1, img_size=518).eval()
    _spread(model)
    model.to(dtype)
    calls: list[str] = []

    def hook(name: str) -> object:
        def halve(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return output * 0.5

        return halve

    for name in _FUSED_MODULES:
        model.get_submodule(name).register_forward_hook(hook(name))  # type: ignore[arg-type]
    images = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = _features(model, images)
    assert sorted(calls) == sorted(_FUSED_MODULES)
    calls.clear()
    with plain_kernels():
        want = _features(model, images)
    assert sorted(calls) == sorted(_FUSED_MODULES)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=tolerance, atol=tolerance, msg=key)


def _shift_outputs(module: torch.nn.Module) -> None:
    # Turn the module into a subclass whose forward adds 0.5, as a LoRA or quantised wrapper
    # changes what a layer computes while keeping its weight and bias attributes.
    base = type(module)

    def forward(self: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return base.forward(self, *args) + 0.5

    module.__class__ = type(f"Shifted{base.__name__}", (base,), {"forward": forward})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replaced_fused_modules_are_honoured(fast_on_cpu: None, dtype: torch.dtype) -> None:
    model = create_backbone("dinov2_vits14", depth=1, img_size=518).eval()
    _spread(model)
    model.to(dtype)
    for name in _FUSED_MODULES:
        if name != "blocks.0.mlp.act":
            _shift_outputs(model.get_submodule(name))
    model.blocks[0].mlp.act = torch.nn.ReLU()
    images = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = _features(model, images)
    with plain_kernels():
        want = _features(model, images)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=tolerance, atol=tolerance, msg=key)


def test_reduced_precision_mlp_takes_an_empty_batch(fast_on_cpu: None) -> None:
    mlp = Mlp(16, 32).to(torch.bfloat16)
    x = torch.zeros(0, 5, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        got = mlp(x)
        with plain_kernels():
            want = mlp(x)
    assert got.shape == want.shape == (0, 5, 16)
