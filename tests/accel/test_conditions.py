"""When the fast modules compute their fast way: a GPU, eagerly, with nothing to honour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads import create_backbone
from dinov2_heads.accel import accelerate
from dinov2_heads.accel.conditions import bypassable, on_fast_device, runs_fast


def test_cpu_is_not_a_fast_device_by_default() -> None:
    assert not on_fast_device(torch.zeros(1))
    assert not runs_fast(torch.zeros(1))


def test_runs_fast_on_a_fast_device(fast_on_cpu: None) -> None:
    assert runs_fast(torch.zeros(1))


def test_compiled_graphs_take_the_plain_computations(fast_on_cpu: None) -> None:
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(runs_fast(x))
        return x + 1

    torch.compile(forward, backend="eager", fullgraph=True)(torch.zeros(2))
    assert seen == [False]

    graphs: list[torch.fx.GraphModule] = []

    def capture(graph: torch.fx.GraphModule, example: object) -> object:
        graphs.append(graph)
        return graph.forward

    model = create_backbone("dinov2_vits14", depth=1).eval()
    accelerate(model)
    with torch.no_grad():
        torch.compile(model.forward_features, backend=capture, fullgraph=True)(
            torch.randn(1, 3, 28, 42)
        )
    targets = {str(node.target) for graph in graphs for node in graph.graph.nodes}
    assert any("conv2d" in target for target in targets), targets  # the plain patch embedding


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_traced_graphs_take_the_plain_computations(fast_on_cpu: None) -> None:
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(runs_fast(x))
        return x + 1

    torch.jit.trace(forward, torch.zeros(2), check_trace=False)
    assert seen == [False]

    model = create_backbone("dinov2_vits14", depth=1).eval()
    accelerate(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 28, 42), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aten::_convolution" in graph  # the plain patch embedding
    # The plain model's traceable resize of the position table, on the float32 table (the fast
    # one resizes it in float64).
    assert "aten::matmul" in graph
    assert "Float(1, 384, 37, 37" in graph
    assert "Double(1, 384, 37, 37" not in graph


def test_only_plain_modules_without_hooks_are_bypassable() -> None:
    linear = nn.Linear(2, 2)
    assert bypassable(linear, nn.Linear)
    assert bypassable(linear, nn.Conv2d, nn.Linear)
    assert not bypassable(linear, nn.Conv2d)
    assert not bypassable(nn.LazyLinear(2), nn.Linear)  # a subclass

    handle = linear.register_forward_pre_hook(lambda module, args: None)
    assert not bypassable(linear, nn.Linear)
    handle.remove()
    assert bypassable(linear, nn.Linear)

    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert not bypassable(linear, nn.Linear)  # a global hook sees every module
    finally:
        handle.remove()
