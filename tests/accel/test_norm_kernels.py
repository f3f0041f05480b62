"""The Triton LayerNorm kernel against PyTorch, and when the fast modules launch it.

The kernel runs on a GPU, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``); where
neither is available, the kernel tests skip and the tests of when it is launched still run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from dinov2_heads.accel import FastBlock, FastLayerNorm, accelerate, norm_kernels
from dinov2_heads.layers import Block, Mlp
from tests.accel.conftest import spread

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not norm_kernels.kernels_available(torch.zeros(1, device=_DEVICE)),
    reason="needs Triton and a GPU (or TRITON_INTERPRET=1 on CPU)",
)
_TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


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
    total, got = norm_kernels.launch(x, None, None, norm)
    want = _float32_norm(x, norm).to(dtype)
    assert total is not got
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
    total, normed = norm_kernels.launch(x, branch, gamma, norm)
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
    got, _ = norm_kernels.launch(x, branch, gamma, None)
    want = torch.addcmul(x, branch, gamma) if gamma is not None else x + branch
    torch.testing.assert_close(got, want, rtol=_TOLERANCE[dtype], atol=_TOLERANCE[dtype])


@needs_kernels
def test_kernel_reads_non_contiguous_inputs() -> None:
    norm = _norm(64, torch.float32)
    x = torch.randn(64, 10, device=_DEVICE).T  # (10, 64), columns strided
    _, got = norm_kernels.launch(x, None, None, norm)
    torch.testing.assert_close(got, norm(x), rtol=2e-5, atol=2e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_modules_run_the_kernel_without_falling_back(
    fast_on_cpu: None, dtype: torch.dtype
) -> None:
    block = Block(64, 2, Mlp(64, 128), init_values=0.5, norm_eps=1e-6)
    spread(block)
    block.to(device=_DEVICE, dtype=dtype)
    x = torch.randn(2, 9, 64).to(device=_DEVICE, dtype=dtype)
    with torch.no_grad():
        want = block(x)
        accelerate(block)
        got = block(x)
    assert type(block.norm1) is FastLayerNorm
    assert not any(getattr(m, "kernel_failed", False) for m in block.modules())
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------- when it launches


@pytest.fixture
def recorded_launches(
    fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[bool, bool]]:
    """Each launch as (with a branch, with a norm), computed by PyTorch.

    Triton's presence and the CPU interpreter are declared, so that the decision to launch can
    be checked on any machine; the kernel's own numbers are checked by the tests above.
    """
    launches: list[tuple[bool, bool]] = []

    def launch(
        x: torch.Tensor,
        branch: torch.Tensor | None,
        gamma: torch.Tensor | None,
        norm: nn.LayerNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        launches.append((branch is not None, norm is not None))
        total = x
        if branch is not None:
            total = torch.addcmul(x, branch, gamma) if gamma is not None else x + branch
        if norm is None:
            return total, total
        weight, bias, eps = norm.weight, norm.bias, norm.eps
        return total, nn.functional.layer_norm(total, norm.normalized_shape, weight, bias, eps)

    monkeypatch.setattr(norm_kernels, "_triton_installed", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(norm_kernels, "launch", launch)
    return launches


def _fast_block() -> FastBlock:
    block = Block(16, 2, Mlp(16, 32), init_values=0.5)
    spread(block)
    accelerate(block)
    assert type(block) is FastBlock
    return block


def test_an_accelerated_block_launches_three_kernels(
    recorded_launches: list[tuple[bool, bool]],
) -> None:
    block = _fast_block()
    with torch.no_grad():
        block(torch.randn(2, 5, 16))
    # norm1; the first residual with norm2; the second residual.
    assert recorded_launches == [(False, True), (True, True), (True, False)]


def test_kernels_step_aside_where_autograd_records(
    recorded_launches: list[tuple[bool, bool]],
) -> None:
    block = _fast_block()
    block(torch.randn(2, 5, 16)).sum().backward()
    assert recorded_launches == []
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_vmap_steps_aside_and_keeps_the_kernels(
    recorded_launches: list[tuple[bool, bool]],
) -> None:
    # torch.func.vmap (model ensembling) hands the modules batched tensors, whose storage
    # Triton cannot read: PyTorch's operations run there, and no kernel is marked as failed.
    block = _fast_block()
    x = torch.randn(3, 2, 5, 16)
    with torch.no_grad():
        got = torch.func.vmap(block)(x)
        assert recorded_launches == []
        want = torch.stack([block(sample) for sample in x])
    assert len(recorded_launches) == 3 * 3  # outside vmap, the kernels run again
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not any(getattr(m, "kernel_failed", False) for m in block.modules())


def test_norms_the_kernel_cannot_compute_are_computed_by_pytorch(
    recorded_launches: list[tuple[bool, bool]],
) -> None:
    no_bias = nn.LayerNorm(16, bias=False)
    double = nn.LayerNorm(16).double()
    plain = nn.LayerNorm(16)
    for norm in (no_bias, double, plain):
        norm.__class__ = FastLayerNorm
    x = torch.randn(2, 16)
    with torch.no_grad():
        no_bias(x)
        double(x.double())
        assert recorded_launches == []
        plain(x)
    assert recorded_launches == [(False, True)]


def test_importing_the_library_does_not_import_triton() -> None:
    code = "import sys, dinov2_heads, dinov2_heads.accel; print('triton' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
