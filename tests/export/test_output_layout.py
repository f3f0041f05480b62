"""What ``export_onnx`` says each output holds is what the graph gives, for every head type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.export import OutputLayout, export_onnx, read_onnx_metadata
from dinov2_heads.export.output_layout import head_task, single_output_name
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import (
    Conv1dNeck,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)

from .conftest import TokenHead

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def every_kind() -> MultiHead:
    torch.manual_seed(0)
    return MultiHead(
        {
            "kind": LinearHead(64, 3, n_blocks=4),
            "parts": LinearSegmentationHead(64, 5, layers=4),
            "linear4": LinearDepthHead(64, layers=4, n_bins=16),
            "dpt": DPTDepthHead(64, channels=16),
            "mine": TokenHead("class"),
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, OutputLayout]]:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=2)
    heads = every_kind()
    path = tmp_path_factory.mktemp("layout") / "every.onnx"
    result = export_onnx(FrozenBackbone.for_heads(backbone, heads), heads, path, verify=False)
    return path, result.output_layouts


def test_each_head_type_is_described_by_its_task(
    exported: tuple[Path, dict[str, OutputLayout]],
) -> None:
    _, layouts = exported
    assert {name: layout.describe() for name, layout in layouts.items()} == {
        "kind": "logits (B, K), K = 3",
        "parts": "logits (B, K, h, w), K = 5, h = H/14, w = W/14",
        "linear4": "depth in metres (B, 1, 4h, 4w), h = H/14, w = W/14",
        "dpt": "depth in metres (B, 1, 32*((h - 1)//2) + 32, 32*((w - 1)//2) + 32), h = H/14, "
        "w = W/14",
        "mine": "output (B, 64)",
    }
    assert [layout.task for layout in layouts.values()] == [
        "classification",
        "segmentation",
        "depth",
        "depth",
        None,
    ]


def evaluated(dims: list[str | int], values: dict[str, int | None]) -> tuple[int, ...]:
    """Dimensions such as ``4*grid_h`` or ``32*((h - 1)//2) + 32`` at these values."""
    return tuple(int(eval(d, {}, values)) if isinstance(d, str) else d for d in dims)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(112, 224), (126, 252), (70, 42), (42, 42)])
def test_the_declared_shapes_are_the_shapes_the_graph_gives(
    exported: tuple[Path, dict[str, OutputLayout]], size: tuple[int, int]
) -> None:
    path, layouts = exported
    model = onnx.load(str(path), load_external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_outputs = session.run(None, {"images": torch.randn(2, 3, *size).numpy()})
    names = [value.name for value in model.graph.output]
    grid = {"batch": 2, "grid_h": size[0] // 14, "grid_w": size[1] // 14}
    letters = {"B": 2, "h": size[0] // 14, "w": size[1] // 14, "K": None}
    for value, got in zip(model.graph.output, got_outputs, strict=True):
        declared = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        # The file's declared dimensions, evaluated at this size, are the output's shape...
        shape = evaluated(declared, grid)
        assert shape == got.shape, value.name
        # ... and so is the layout the command prints, read with the design's letters.
        layout = layouts[value.name]
        letters["K"] = layout.num_classes
        readable = [
            str(d).replace("4h", "4*h").replace("4w", "4*w") if isinstance(d, str) else d
            for d in layout.shape
        ]
        described = evaluated(readable, letters)
        assert described == got.shape, value.name
        assert value.doc_string == layout.describe()
    assert names == list(layouts)


def test_the_metadata_keeps_each_layout(exported: tuple[Path, dict[str, OutputLayout]]) -> None:
    path, layouts = exported
    stored = read_onnx_metadata(path)["output_layouts"]
    assert stored == {name: layout.to_dict() for name, layout in layouts.items()}
    assert stored["parts"]["shape"] == ["B", "K", "h", "w"]
    assert stored["linear4"]["num_classes"] is None


def test_a_fixed_size_graph_declares_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=2)
    heads = MultiHead({"brand": Conv1dNeck((9, 18), 64, 3), "parts": LinearSegmentationHead(64, 4)})
    frozen = FrozenBackbone.for_heads(backbone, heads)
    result = export_onnx(frozen, heads, tmp_path / "fixed.onnx", input_size=(126, 252))
    assert not result.dynamic_size
    assert {name: layout.describe() for name, layout in result.output_layouts.items()} == {
        "brand": "logits (B, K), K = 3",
        "parts": "logits (B, K, 9, 18), K = 4",
    }
    single = export_onnx(
        frozen, heads["parts"], tmp_path / "one.onnx", input_size=(126, 252), dynamic_batch=False
    )
    assert single.output_layouts["logits"].shape == (1, "K", "h", "w")


def test_single_heads_are_named_by_their_task() -> None:
    assert single_output_name(LinearDepthHead(64)) == "depth"
    assert single_output_name(DPTDepthHead(64, channels=8)) == "depth"
    assert single_output_name(LinearSegmentationHead(64, 3)) == "logits"
    assert single_output_name(LinearHead(64, 3)) == "logits"
    assert head_task(TokenHead("class")) is None
    assert head_task(LinearHead(64, 3)) == "classification"


def test_without_the_exported_program_the_exporters_names_stay(tmp_path: Path) -> None:
    from dinov2_heads.export.output_layout import describe_outputs

    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=2)
    head = LinearSegmentationHead(64, 4)
    frozen = FrozenBackbone.for_heads(backbone, head)
    export_onnx(frozen, head, tmp_path / "seg.onnx", verify=False)
    model = onnx.load(str(tmp_path / "seg.onnx"))
    from onnxscript import ir

    program = torch.onnx.ONNXProgram(ir.serde.deserialize_model(model), None)
    layouts = describe_outputs(program, {"logits": head}, 14)
    # The file already says grid_h and grid_w, which read as h and w.
    assert layouts["logits"].describe() == "logits (B, K, h, w), K = 4, h = H/14, w = W/14"
