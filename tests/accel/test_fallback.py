"""A kernel that fails in a module: one warning for that module, which then computes the plain way.

Triton's presence and its CPU interpreter are declared and the launch is made to fail, so that
the fallback is checked on any machine.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from dinov2_heads import create_backbone
from dinov2_heads.accel import accelerate, norm_kernels
from tests.accel.conftest import features, spread


@pytest.fixture
def kernels_declared(fast_on_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norm_kernels, "_triton_installed", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone("dinov2_vits14", depth=2, embed_dim=32, num_heads=2).eval()
    spread(model)
    return model


def test_a_failing_kernel_warns_once_per_module_and_falls_back(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    launches = []

    def broken(*args: object) -> None:
        launches.append(args)
        raise RuntimeError("PassManager::run failed\nno kernel for this GPU")

    monkeypatch.setattr(norm_kernels, "launch", broken)
    model = _model()
    images = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    want = features(model, images)
    accelerate(model)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        got = features(model, images)
    # Each module with a kernel tried it once and said so once, by name, with the error; a
    # block whose fused residual + norm2 failed calls norm2, which tries its own kernel.
    failed = {"norm"} | {f"blocks.{i}{part}" for i in (0, 1) for part in ("", ".norm1", ".norm2")}
    assert len(launches) == len(failed)
    assert len(caplog.records) == len(failed)
    named = {m.split(" failed in ")[1].split(" (")[0] for m in caplog.messages}
    assert named == failed
    for message in caplog.messages:
        assert "(RuntimeError: no kernel for this GPU); this module computes with PyTorch's" in (
            message
        )
    assert {n for n, m in model.named_modules() if getattr(m, "kernel_failed", False)} == failed
    for key in want:
        # PyTorch's operations; the residual rounded once (torch.addcmul) instead of twice.
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)
    caplog.clear()
    again = features(model, images)
    assert len(launches) == len(failed)  # not tried again
    assert caplog.records == []
    for key in want:
        assert torch.equal(again[key], got[key])


def test_a_failure_in_one_module_leaves_the_others_on(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_failures = [RuntimeError("out of shared memory")]
    launched: list[int] = []

    def fails_once(
        x: torch.Tensor,
        branch: torch.Tensor | None,
        gamma: torch.Tensor | None,
        norm: nn.LayerNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if real_failures:
            raise real_failures.pop()
        launched.append(1)
        total = x if branch is None else x + (branch * gamma if gamma is not None else branch)
        if norm is None:
            return total, total
        return total, nn.functional.layer_norm(
            total, norm.normalized_shape, norm.weight, norm.bias, norm.eps
        )

    monkeypatch.setattr(norm_kernels, "launch", fails_once)
    model = _model()
    accelerate(model)
    images = torch.randn(1, 3, 28, 28)
    features(model, images)
    # blocks.0.norm1 is the first kernel of the forward pass: only it is off.
    failed = [n for n, m in model.named_modules() if getattr(m, "kernel_failed", False)]
    assert failed == ["blocks.0.norm1"]
    first = len(launched)
    assert first == 2 * 3 + 1 - 1  # 3 kernels per block and the final norm's, one failed
    features(model, images)
    assert len(launched) == 2 * first


def test_running_out_of_memory_raises_and_keeps_the_kernels(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An out-of-memory error is the batch's, not the kernel's: it must reach the caller as
    # PyTorch's own would, and switch nothing off.
    def out_of_memory(*args: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(norm_kernels, "launch", out_of_memory)
    model = _model()
    accelerate(model)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        features(model, torch.randn(1, 3, 28, 28))
    block = model.blocks[0]
    with torch.no_grad(), pytest.raises(torch.cuda.OutOfMemoryError):
        block._add_and_norm(torch.ones(1, 2, 32), torch.ones(1, 2, 32), None)
    with torch.no_grad(), pytest.raises(torch.cuda.OutOfMemoryError):
        block._add(torch.ones(1, 2, 32), torch.ones(1, 2, 32), None)
    assert not any(getattr(m, "kernel_failed", False) for m in model.modules())
