"""The Triton norm kernels as custom operators, and ``torch.compile`` keeping them in its graphs.

The operators run the kernel on a GPU, or on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``); where neither is available those tests skip. The graphs are checked
with the ``eager`` and ``aot_eager`` backends (what is captured, and the operators' fake
implementations), not by timing.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from dinov2_heads import create_backbone
from dinov2_heads.accel import accelerate, norm_kernels, norm_ops
from dinov2_heads.accel.fallback import KernelFallback
from dinov2_heads.features import FrozenBackbone
from tests.accel.conftest import features, spread

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not norm_kernels.kernels_available(torch.zeros(1, device=_DEVICE))
    or not hasattr(torch.library, "custom_op"),
    reason="needs Triton and a GPU (or TRITON_INTERPRET=1 on CPU), and torch.library.custom_op",
)
_OPS = ("layer_norm", "add_scaled_layer_norm", "add_scaled")


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def registered() -> None:
    assert norm_ops.register() is None
    assert _DEVICE in norm_ops.GRAPH_DEVICE_TYPES


def _norm(width: int, dtype: torch.dtype) -> nn.LayerNorm:
    norm = nn.LayerNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm.to(device=_DEVICE, dtype=dtype)


def _inputs(dtype: torch.dtype, *, transposed: bool = False) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x, branch = (torch.randn(2, 7, 48, generator=generator) for _ in range(2))
    if transposed:  # (7, 2, 48), not contiguous
        x, branch = x.transpose(0, 1), branch.transpose(0, 1)
    gamma = torch.rand(48, generator=generator)
    return tuple(t.to(device=_DEVICE, dtype=dtype) for t in (x, branch, gamma))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_operator_equals_the_direct_kernel_launch(
    registered: None, dtype: torch.dtype
) -> None:
    norm = _norm(48, dtype)
    x, branch, gamma = _inputs(dtype)
    ops = torch.ops.dinov2_heads
    with torch.no_grad():
        assert torch.equal(
            ops.layer_norm(x, norm.weight, norm.bias, norm.eps),
            norm_kernels.launch(x, None, None, norm)[1],
        )
        for scale in (gamma, None):
            assert torch.equal(
                ops.add_scaled(x, branch, scale), norm_kernels.launch(x, branch, scale, None)[0]
            )
            got = ops.add_scaled_layer_norm(x, branch, scale, norm.weight, norm.bias, norm.eps)
            want = norm_kernels.launch(x, branch, scale, norm)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    # And the kernel is the LayerNorm.
    tolerance = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        ops.layer_norm(x, norm.weight, norm.bias, norm.eps).float(),
        nn.functional.layer_norm(x.float(), (48,), norm.weight.float(), norm.bias.float(), 1e-6),
        rtol=tolerance,
        atol=tolerance,
    )


@needs_kernels
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_operators_pass_opcheck(registered: None, transposed: bool, with_gamma: bool) -> None:
    # The schema, the fake implementations (shapes, strides, dtypes against the real ones) and
    # AOT tracing with dynamic shapes, as torch.library checks them.
    norm = _norm(48, torch.float32)
    x, branch, gamma = _inputs(torch.float32, transposed=transposed)
    scale = gamma if with_gamma else None
    weight, bias = norm.weight.detach(), norm.bias.detach()
    ops = torch.ops.dinov2_heads
    for op, args in [
        (ops.layer_norm.default, (x, weight, bias, 1e-6)),
        (ops.add_scaled.default, (x, branch, scale)),
        (ops.add_scaled_layer_norm.default, (x, branch, scale, weight, bias, 1e-6)),
    ]:
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


class _Capture:
    """A ``torch.compile`` backend that keeps each captured graph and runs it as it is."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph: torch.fx.GraphModule, example: object) -> Callable[..., Any]:
        self.graphs.append(graph)
        return graph.forward

    def operators(self) -> list[str]:
        """The ``dinov2_heads`` operators called by the graphs, in order."""
        return [
            str(node.target).split(".")[1]
            for graph in self.graphs
            for node in graph.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("dinov2_heads.")
        ]


def _model(depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone(
        "dinov2_vits14", depth=depth, embed_dim=32, num_heads=2, img_size=56
    ).eval()
    spread(model)
    return model.to(_DEVICE).requires_grad_(False)


@needs_kernels
def test_a_compiled_model_keeps_the_kernels_in_one_graph(
    fast_on_cpu: None, registered: None
) -> None:
    model = _model()
    images = torch.randn(2, 3, 28, 42, device=_DEVICE)
    want = features(model, images)
    assert accelerate(model, compiled_kernels=True)
    capture = _Capture()
    compiled = torch.compile(model.forward_features, backend=capture, fullgraph=True)
    with torch.no_grad():
        got = compiled(images)
    # fullgraph=True raises on a graph break; one graph, with the three kernels of each block
    # and the final norm's.
    assert len(capture.graphs) == 1
    assert capture.operators() == [*_OPS, *_OPS, "layer_norm"]
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)
    explained = torch._dynamo.explain(model.forward_features)(images)
    assert explained.graph_break_count == 0


@needs_kernels
def test_aot_tracing_and_dynamic_shapes_keep_the_kernels(
    fast_on_cpu: None, registered: None
) -> None:
    # AOT autograd traces the graph again through the operators' fake implementations, with
    # symbolic batch, height and width, as Inductor would; the graph then serves another size.
    from torch._dynamo.backends.common import aot_autograd

    model = _model(depth=1)
    accelerate(model, compiled_kernels=True)
    capture = _Capture()
    compiled = torch.compile(
        model.get_intermediate_tokens,
        backend=aot_autograd(fw_compiler=capture),
        fullgraph=True,
        dynamic=True,
    )
    plain = _model(depth=1)
    for batch, height, width in [(2, 28, 42), (3, 42, 70)]:
        images = torch.randn(batch, 3, height, width, device=_DEVICE)
        with torch.no_grad():
            (got,) = compiled(images)
            (want,) = plain.get_intermediate_tokens(images)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(capture.graphs) == 1
    assert capture.operators() == [*_OPS, "layer_norm"]


@needs_kernels
def test_a_compiled_frozen_backbone_runs_the_kernels_of_an_accelerated_backbone(
    fast_on_cpu: None, registered: None
) -> None:
    # FrozenBackbone(compile=...) leaves acceleration to the caller: with the kernels kept in
    # graphs, its dynamic-batch graph holds them, and one graph serves every batch size.
    from torch._dynamo.utils import counters

    backbone = _model()
    want = FrozenBackbone(_model(), accelerate=False)
    accelerate(backbone, compiled_kernels=True)
    calls = []
    original = norm_kernels.launch_parts

    def counted(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return original(*args, **kwargs)

    counters.clear()
    compiled = FrozenBackbone(backbone, compile={"backend": "aot_eager", "fullgraph": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(norm_kernels, "launch_parts", counted)
        for batch in (3, 5, 4):
            images = torch.randn(batch, 3, 28, 42, device=_DEVICE)
            got = compiled(images)
            torch.testing.assert_close(
                got.patch_tokens[-1], want(images).patch_tokens[-1], rtol=1e-5, atol=1e-5
            )
    assert int(counters["stats"]["unique_graphs"]) == 1
    assert len(calls) == 3 * 7  # the kernels ran, 7 launches per pass


@needs_kernels
def test_graphs_that_record_gradients_or_are_exported_stay_plain(
    fast_on_cpu: None, registered: None
) -> None:
    model = _model(depth=1)
    accelerate(model, compiled_kernels=True)
    images = torch.randn(1, 3, 28, 28, device=_DEVICE)
    # Autograd records: the operators have no backward.
    model.requires_grad_(True)
    capture = _Capture()
    out = torch.compile(model.forward_features, backend=capture, fullgraph=True)(images)
    out["x_norm_clstoken"].sum().backward()
    assert capture.operators() == []
    assert all(p.grad is not None for p in model.blocks.parameters())
    # torch.export (and so ONNX export) keeps the model free of them.
    model.requires_grad_(False)
    exported = torch.export.export(model, (images,))
    assert "dinov2_heads" not in str(exported.graph)


def test_without_compiled_kernels_graphs_stay_plain(fast_on_cpu: None) -> None:
    model = _model(depth=1)
    accelerate(model)
    assert not any(getattr(m, "compiled_kernels", False) for m in model.modules())
    capture = _Capture()
    with torch.no_grad():
        torch.compile(model.forward_features, backend=capture, fullgraph=True)(
            torch.randn(1, 3, 28, 28, device=_DEVICE)
        )
    assert capture.operators() == []


def test_compiled_kernels_applies_to_modules_swapped_before() -> None:
    if norm_ops.register() is not None:
        pytest.skip("the operators cannot be registered here (no Triton)")
    model = _model(depth=1)
    accelerate(model)
    assert not any(m.compiled_kernels for m in model.modules() if isinstance(m, KernelFallback))
    assert accelerate(model, compiled_kernels=True) == []
    assert all(m.compiled_kernels for m in model.modules() if isinstance(m, KernelFallback))
    accelerate(model)  # False leaves them as they are
    assert all(m.compiled_kernels for m in model.modules() if isinstance(m, KernelFallback))


def test_without_triton_compiled_kernels_warns_and_graphs_stay_plain(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(norm_kernels, "_triton_installed", lambda: False)
    monkeypatch.setattr(norm_ops, "_registered", False)
    model = _model(depth=1)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.accel"):
        assert accelerate(model, compiled_kernels=True)
    assert caplog.messages == [
        "accelerate(compiled_kernels=True): Triton is not installed; compiled graphs compute "
        "the LayerNorms and residual additions with PyTorch's operations"
    ]
    assert not any(getattr(m, "compiled_kernels", False) for m in model.modules())


def test_compiled_kernels_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="compiled_kernels must be True or False, got 'yes'"):
        accelerate(_model(depth=1), compiled_kernels="yes")  # type: ignore[arg-type]


def test_importing_and_plain_accelerating_register_nothing() -> None:
    code = (
        "import sys, torch, dinov2_heads\n"
        "from dinov2_heads.accel import accelerate\n"
        "accelerate(dinov2_heads.create_backbone('dinov2_vits14', depth=1))\n"
        "print('triton' in sys.modules, hasattr(torch.ops.dinov2_heads, 'layer_norm'))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
