"""The Triton LayerNorm kernels against PyTorch, and their fallback.

The kernels run on a GPU, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``); where
neither is available, the kernel tests skip and the fallback tests still run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from dinov2_heads.layers import norm_kernels

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not norm_kernels.kernels_available(torch.zeros(1, device=_DEVICE)),
    reason="needs Triton and a GPU (or TRITON_INTERPRET=1 on CPU)",
)
_TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def kernels_must_not_fall_back(request: pytest.FixtureRequest) -> Iterator[None]:
    # A kernel that fails to build falls back to PyTorch with a warning: in the kernel tests
    # that would compare PyTorch with itself, so it fails them instead.
    yield
    if request.node.get_closest_marker("skipif") is not None:
        assert norm_kernels._broken == [], norm_kernels._broken


def _norm(width: int, dtype: torch.dtype) -> nn.LayerNorm:
    norm = nn.LayerNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm.to(device=_DEVICE, dtype=dtype)


def _float32_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    weight, bias = norm.weight.float(), norm.bias.float()
    return torch.nn.functional.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "width"), [(37, 384), (5, 20), (3, 1536)])
def test_layer_norm_matches_pytorch(dtype: torch.dtype, rows: int, width: int) -> None:
    norm = _norm(width, dtype)
    x = (torch.randn(rows, 2, width) * 3 + 1).to(device=_DEVICE, dtype=dtype)
    got = norm_kernels.layer_norm(x, norm)
    want = _float32_norm(x, norm).to(dtype)
    assert got.shape == x.shape
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=_TOLERANCE[dtype], atol=_TOLERANCE[dtype])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_add_scaled_layer_norm_matches_addcmul_then_layer_norm(
    dtype: torch.dtype, with_gamma: bool
) -> None:
    width = 384
    norm = _norm(width, dtype)
    x = torch.randn(3, 29, width).to(device=_DEVICE, dtype=dtype)
    branch = torch.randn(3, 29, width).to(device=_DEVICE, dtype=dtype)
    gamma = torch.rand(width).to(device=_DEVICE, dtype=dtype) if with_gamma else None
    total, normed = norm_kernels.add_scaled_layer_norm(x, branch, gamma, norm)
    want_total = torch.addcmul(x, branch, gamma) if gamma is not None else x + branch
    tolerance = _TOLERANCE[dtype]
    # The sum is rounded once, from float32, as torch.addcmul rounds it.
    torch.testing.assert_close(total, want_total, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(
        normed, _float32_norm(total, norm).to(dtype), rtol=tolerance, atol=tolerance
    )


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_add_scaled_matches_addcmul(dtype: torch.dtype, with_gamma: bool) -> None:
    x = torch.randn(7, 3, 1024).to(device=_DEVICE, dtype=dtype)
    branch = torch.randn(7, 3, 1024).to(device=_DEVICE, dtype=dtype)
    gamma = torch.rand(1024).to(device=_DEVICE, dtype=dtype) if with_gamma else None
    got = norm_kernels.add_scaled(x, branch, gamma)
    want = torch.addcmul(x, branch, gamma) if gamma is not None else x + branch
    torch.testing.assert_close(got, want, rtol=_TOLERANCE[dtype], atol=_TOLERANCE[dtype])


@needs_kernels
def test_kernels_read_non_contiguous_inputs() -> None:
    norm = _norm(64, torch.float32)
    x = torch.randn(64, 10, device=_DEVICE).T  # (10, 64), columns strided
    torch.testing.assert_close(norm_kernels.layer_norm(x, norm), norm(x), rtol=2e-5, atol=2e-5)


def test_fallback_without_kernels_is_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norm_kernels, "_HAS_TRITON", False)
    norm = _norm(16, torch.float32)
    x, branch, gamma = torch.randn(4, 16), torch.randn(4, 16), torch.rand(16)
    x, branch, gamma = x.to(_DEVICE), branch.to(_DEVICE), gamma.to(_DEVICE)
    assert torch.equal(norm_kernels.layer_norm(x, norm), norm(x))
    total, normed = norm_kernels.add_scaled_layer_norm(x, branch, gamma, norm)
    assert torch.equal(total, torch.addcmul(x, branch, gamma))
    assert torch.equal(normed, norm(total))
    assert torch.equal(norm_kernels.add_scaled(x, branch, gamma), total)
    assert torch.equal(norm_kernels.add_scaled(x, branch, None), x + branch)


def test_a_failing_kernel_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norm_kernels, "_broken", [])
    monkeypatch.setattr(norm_kernels, "_norm_usable", lambda x, norm: True)

    def broken(*args: object) -> None:
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(norm_kernels, "_launch", broken)
    norm = _norm(16, torch.float32)
    x = torch.randn(4, 16, device=_DEVICE)
    with pytest.warns(RuntimeWarning, match="no kernel for this GPU"):
        assert torch.equal(norm_kernels.layer_norm(x, norm), norm(x))
    assert norm_kernels._broken
    assert not norm_kernels.kernels_available(x)


def test_running_out_of_memory_raises_and_keeps_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An out-of-memory error is the batch's, not the kernel's: it must reach the caller as
    # PyTorch's own would, not switch the kernels off for the rest of the process.
    monkeypatch.setattr(norm_kernels, "_broken", [])
    monkeypatch.setattr(norm_kernels, "kernels_available", lambda x: True)
    monkeypatch.setattr(norm_kernels, "_norm_usable", lambda x, norm: True)
    monkeypatch.setattr(norm_kernels, "_branch_usable", lambda x, branch, gamma: True)

    def out_of_memory(*args: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(norm_kernels, "_launch", out_of_memory)
    norm = _norm(16, torch.float32)
    x = torch.randn(4, 16, device=_DEVICE)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        norm_kernels.layer_norm(x, norm)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        norm_kernels.add_scaled_layer_norm(x, x, None, norm)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        norm_kernels.add_scaled(x, x, None)
    assert norm_kernels._broken == []


def test_vmap_steps_aside_and_keeps_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.func.vmap (model ensembling) hands the functions batched tensors, whose storage
    # Triton cannot read: PyTorch's operations run there, and the kernels stay on afterwards.
    monkeypatch.setattr(norm_kernels, "_broken", [])
    norm = _norm(16, torch.float32)
    x, branch = torch.randn(3, 4, 16, device=_DEVICE), torch.randn(3, 4, 16, device=_DEVICE)
    gamma = torch.rand(16, device=_DEVICE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        normed = torch.func.vmap(lambda t: norm_kernels.layer_norm(t, norm))(x)
        total, normed_total = torch.func.vmap(
            lambda t, b: norm_kernels.add_scaled_layer_norm(t, b, gamma, norm)
        )(x, branch)
        summed = torch.func.vmap(lambda b: norm_kernels.add_scaled(x[0], b, gamma))(branch)
        torch.testing.assert_close(normed, norm(x))
        torch.testing.assert_close(total, torch.addcmul(x, branch, gamma))
        torch.testing.assert_close(normed_total, norm(torch.addcmul(x, branch, gamma)))
        torch.testing.assert_close(summed, torch.addcmul(x[0], branch, gamma))
    assert norm_kernels._broken == []
