from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from dinov2_heads.accel import conditions

#: The devices the tests run models on: CPU, and CUDA where there is one.
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture
def fast_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast modules take their fast computations on CPU too, to check their arithmetic."""
    monkeypatch.setattr(conditions, "FAST_DEVICE_TYPES", frozenset({"cpu", "cuda"}))


@pytest.fixture
def no_tf32() -> Iterator[None]:
    # The plain model's convolution would run in TF32 on a GPU by default.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def spread(model: torch.nn.Module) -> None:
    """LayerScale of 1 and zero biases would hide a wrong fusion: give them other values."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                param.uniform_(0.1, 1.0)


def features(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of ``forward_features``, without autograd."""
    with torch.no_grad():
        out = model.forward_features(images)  # type: ignore[operator]
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
