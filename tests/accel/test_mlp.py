"""``FastMlp``: fc1, its bias and the GELU as one call in reduced precision."""

from __future__ import annotations

import logging

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.accel import FastMlp, accelerate
from dinov2_heads.layers import Mlp
from tests.accel.conftest import DEVICES, features, spread


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_mlp_runs_as_one_call_with_the_plain_numbers(
    fast_on_cpu: None,
    no_tf32: None,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    dtype: torch.dtype,
) -> None:
    model = create_backbone("dinov2_vits14", depth=2, img_size=518).eval()
    spread(model)
    model.to(device)
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0)).to(device)
    reference = features(model, images)
    model = model.to(dtype)
    images = images.to(dtype)
    plain = features(model, images)
    fused = torch._addmm_activation
    calls = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs.get("use_gelu"))
        return fused(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "_addmm_activation", spy)
    accelerate(model)
    got = features(model, images)
    assert calls == [True, True]
    for key in ("x_norm_clstoken", "x_norm_patchtokens"):
        want = reference[key]
        fast_error = (got[key].float() - want).norm() / want.norm()
        plain_error = (plain[key].float() - want).norm() / want.norm()
        # Within the rounding of the reduced dtype, and no worse than the plain model by much.
        assert fast_error < 3e-2, key
        assert fast_error < 1.5 * plain_error + 1e-3, (key, fast_error, plain_error)


def test_float32_mlp_keeps_the_exact_gelu(
    fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_backbone("dinov2_vits14", depth=1).eval()
    accelerate(model)
    monkeypatch.setattr(torch, "_addmm_activation", None)  # would fail if called
    features(model, torch.randn(1, 3, 28, 28))


def test_reduced_precision_mlp_takes_an_empty_batch(fast_on_cpu: None) -> None:
    mlp = Mlp(16, 32).to(torch.bfloat16)
    x = torch.zeros(0, 5, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        want = mlp(x)
        accelerate(mlp)
        assert type(mlp) is FastMlp
        got = mlp(x)
    assert got.shape == want.shape == (0, 5, 16)


def test_a_failing_gelu_epilogue_warns_once_and_falls_back(
    fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mlp = Mlp(16, 32).to(torch.bfloat16)
    spread(mlp)
    x = torch.randn(2, 5, 16).to(torch.bfloat16)
    with torch.no_grad():
        want = mlp(x)
        accelerate(mlp)

        def missing(*args: object, **kwargs: object) -> None:
            raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")

        monkeypatch.setattr(torch, "_addmm_activation", missing)
        with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
            first, second = mlp(x), mlp(x)
    assert len(caplog.records) == 1
    assert "the cuBLASLt GELU epilogue failed in FastMlp" in caplog.messages[0]
    assert mlp.kernel_failed
    assert torch.equal(first, want)
    assert torch.equal(second, want)
