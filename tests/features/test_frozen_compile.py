from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from dinov2_heads import create_backbone
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


def check_compiled_matches_eager(
    options: dict[str, Any] | bool, registers: int, calls: list[tuple[int, int, int]]
) -> list[int]:
    """Compare compiled and eager features for each (batch, height, width); graphs after each."""
    backbone = tiny_backbone(registers=registers, depth=1)
    eager = FrozenBackbone(backbone)
    compiled = FrozenBackbone(backbone, compile=options)
    graphs = []
    for batch, height, width in calls:
        x = torch.randn(batch, 3, height, width)
        got, expected = compiled(x), eager(x)
        graphs.append(compiled_graphs())
        assert got.grid == expected.grid == (height // 14, width // 14)
        assert got.batch_size == batch
        assert torch.allclose(got.class_token, expected.class_token, atol=1e-5)
        assert torch.allclose(got.patch_tokens[-1], expected.patch_tokens[-1], atol=1e-5)
        if registers:
            assert got.register_tokens is not None
            assert expected.register_tokens is not None
            assert torch.allclose(got.register_tokens, expected.register_tokens, atol=1e-5)
    return graphs


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compile_dynamic_batch_no_recompile() -> None:
    # The "eager" backend runs the captured graph without code generation: it checks what is
    # captured and when it is recaptured, in seconds instead of the C++ build of inductor.
    graphs = check_compiled_matches_eager(
        {"backend": "eager"}, registers=4, calls=[(3, 28, 42), (5, 28, 42), (4, 28, 42)]
    )
    # One graph, compiled on the first call, serves every later batch size.
    assert graphs == [1, 1, 1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
@pytest.mark.parametrize("registers", [0, 4])
def test_compile_new_image_sizes_share_one_graph(registers: int) -> None:
    # Plain models resize the position table by a scale factor, register models to a size:
    # both must stay symbolic in the graph. 56x56 is the tiny table's own size (kept as is).
    calls = [(3, 28, 42), (2, 42, 28), (3, 70, 126), (2, 56, 56), (4, 126, 56), (3, 28, 42)]
    graphs = check_compiled_matches_eager({"backend": "eager"}, registers=registers, calls=calls)
    # The first size compiles static; the second compiles one graph with dynamic height and
    # width, which serves every later size and batch.
    assert graphs == [1, 2, 2, 2, 2, 2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compiled_backbone_interpolation_matches_eager() -> None:
    # Compiling the backbone itself (not through FrozenBackbone) takes the same symbolic path.
    backbone = tiny_backbone(depth=1)
    compiled = torch.compile(backbone.forward_features, backend="eager", dynamic=True)
    for height, width in [(28, 42), (98, 28), (56, 56)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            got, expected = compiled(x), backbone.forward_features(x)
        for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)
    assert compiled_graphs() == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compile_default_backend_same_features() -> None:
    # The default inductor backend generates and builds C++ on CPU (tens of seconds when cold).
    graphs = check_compiled_matches_eager(
        True, registers=0, calls=[(3, 28, 42), (5, 28, 42), (2, 42, 70), (3, 70, 28)]
    )
    assert graphs == [1, 1, 2, 2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_custom_antialias_with_offset_matches_eager() -> None:
    # Not an official family: antialiased resizing by scale factor. The in-graph resampling
    # must follow F.interpolate there too, including a side equal to the table's (56 px).
    torch.manual_seed(0)
    backbone = create_backbone(
        "dinov2_vits14_reg",
        depth=1,
        embed_dim=64,
        num_heads=2,
        img_size=56,
        interpolate_offset=0.1,
    )
    compiled = torch.compile(backbone.forward_features, backend="eager", dynamic=True)
    for height, width in [(28, 42), (56, 28), (42, 56), (98, 70)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            got, expected = compiled(x), backbone.forward_features(x)
        torch.testing.assert_close(got["x_prenorm"], expected["x_prenorm"], atol=1e-5, rtol=0)
