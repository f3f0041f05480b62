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
from dinov2_heads.features import FrozenBackbone
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


def _broken_launch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Every kernel launch fails as a GPU without a build of the kernel would fail; the
    attempts are recorded."""
    launches: list[tuple[object, ...]] = []

    def broken(*args: object) -> None:
        launches.append(args)
        raise RuntimeError("PassManager::run failed\nno kernel for this GPU")

    monkeypatch.setattr(norm_kernels, "launch", broken)
    return launches


#: The modules whose kernels fail in a two-block model: a block whose fused residual + norm2
#: failed calls norm2, which tries its own kernel; the block's second residual is not tried.
_FAILED = ["blocks.0.norm1", "blocks.0", "blocks.0.norm2", "blocks.1.norm1", "blocks.1"]
_FAILED += ["blocks.1.norm2", "norm"]


def test_a_failing_kernel_warns_once_per_cause_and_falls_back(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    launches = _broken_launch(monkeypatch)
    model = _model()
    images = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    want = features(model, images)
    accelerate(model)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        got = features(model, images)
    # Each module with a kernel tried it once; one warning for the one cause says how many
    # modules fell back, names the first five in the order they failed, and gives the error.
    assert len(launches) == len(_FAILED)
    assert {n for n, m in model.named_modules() if getattr(m, "kernel_failed", False)} == set(
        _FAILED
    )
    assert len(caplog.records) == 1
    assert caplog.messages[0] == (
        "the Triton LayerNorm kernel and the Triton residual + LayerNorm kernel failed in 7 "
        "modules (blocks.0.norm1, blocks.0, blocks.0.norm2, blocks.1.norm1, blocks.1 and 2 "
        "more) (RuntimeError: no kernel for this GPU); these modules compute with PyTorch's "
        "operations from now on"
    )
    for key in want:
        # PyTorch's operations; the residual rounded once (torch.addcmul) instead of twice.
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)
    caplog.clear()
    again = features(model, images)
    assert len(launches) == len(_FAILED)  # not tried again
    assert caplog.records == []
    for key in want:
        assert torch.equal(again[key], got[key])


def test_each_cause_of_failure_has_its_own_warning(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The LayerNorm alone fails one way, the fused residual + LayerNorm another.
    def broken(x: torch.Tensor, branch: torch.Tensor | None, gamma: object, norm: object) -> None:
        if branch is None:
            raise RuntimeError("out of shared memory")
        raise ValueError("unsupported dtype")

    monkeypatch.setattr(norm_kernels, "launch", broken)
    model = _model()
    accelerate(model)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        features(model, torch.randn(1, 3, 28, 28))
    assert caplog.messages == [
        "the Triton LayerNorm kernel failed in 5 modules (blocks.0.norm1, blocks.0.norm2, "
        "blocks.1.norm1, blocks.1.norm2, norm) (RuntimeError: out of shared memory); these "
        "modules compute with PyTorch's operations from now on",
        "the Triton residual + LayerNorm kernel failed in 2 modules (blocks.0, blocks.1) "
        "(ValueError: unsupported dtype); these modules compute with PyTorch's operations "
        "from now on",
    ]


def test_a_frozen_backbone_pass_warns_once_for_the_final_norm_too(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With further blocks, FrozenBackbone applies the final norm outside the backbone's own
    # methods: its failure belongs to the same warning.
    _broken_launch(monkeypatch)
    frozen = FrozenBackbone(_model(), blocks=[(0, False)])
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        frozen(torch.randn(1, 3, 28, 28))
    assert len(caplog.records) == 1
    assert "failed in 7 modules" in caplog.messages[0]


def test_a_block_run_on_its_own_warns_for_each_module(
    kernels_declared: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Outside a forward pass of an accelerated backbone there is no pass to summarise: each
    # failure is logged when it happens, naming its module.
    _broken_launch(monkeypatch)
    block = _model().blocks[0]
    accelerate(block)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        block(torch.randn(1, 5, 32))
    assert [m.split(" (")[0] for m in caplog.messages] == [
        "the Triton LayerNorm kernel failed in norm1",
        "the Triton residual + LayerNorm kernel failed in FastBlock",  # accelerate's "" model
        "the Triton LayerNorm kernel failed in norm2",
    ]
    for message in caplog.messages:
        assert message.endswith("; this module computes with PyTorch's operations from now on")


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
