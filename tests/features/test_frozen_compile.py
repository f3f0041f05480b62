from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from dinov2_heads.features import FrozenBackbone
from tests.features.conftest import tiny_backbone


def compiled_graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Any:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def check_compiled_matches_eager(options: dict[str, Any] | bool, registers: int) -> None:
    backbone = tiny_backbone(registers=registers, depth=1)
    eager = FrozenBackbone(backbone)
    compiled = FrozenBackbone(backbone, compile=options)
    graphs = []
    for batch in (3, 5, 4):
        x = torch.randn(batch, 3, 28, 42)
        got, expected = compiled(x), eager(x)
        graphs.append(compiled_graphs())
        assert got.grid == expected.grid
        assert got.batch_size == batch
        assert torch.allclose(got.class_token, expected.class_token, atol=1e-5)
        assert torch.allclose(got.patch_mean, expected.patch_mean, atol=1e-5)
        if registers:
            assert got.register_tokens is not None
            assert expected.register_tokens is not None
            assert torch.allclose(got.register_tokens, expected.register_tokens, atol=1e-5)
    # One graph, compiled on the first call, serves every later batch size.
    assert graphs == [1] * len(graphs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compile_dynamic_batch_no_recompile() -> None:
    # The "eager" backend runs the captured graph without code generation: it checks what is
    # captured and when it is recaptured, in seconds instead of the C++ build of inductor.
    check_compiled_matches_eager({"backend": "eager"}, registers=4)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compile_default_backend_same_features() -> None:
    # The default inductor backend generates and builds C++ on CPU (tens of seconds when cold).
    check_compiled_matches_eager(True, registers=0)
