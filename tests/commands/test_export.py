"""``dinov2-heads export`` of files with segmentation and depth heads: what it says is true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.cli import main
from dinov2_heads.export import load_heads, read_onnx_metadata
from dinov2_heads.features import FrozenBackbone

from .conftest import DenseFiles, Files

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def export(files: Files, heads: Path, out: Path, *extra: str) -> int:
    argv = ["export", "--heads", str(heads), "--checkpoint", str(files.checkpoint)]
    return main([*argv, "--out", str(out), *extra])


def onnx_outputs(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images.numpy()}), strict=True))


@pytest.mark.slow
def test_a_mixed_file_prints_and_writes_each_heads_own_output(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mixed.onnx"
    assert export(files, dense_files.mixed, out) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"wrote {out}"
    assert "any H, W that are multiples of 14, any batch size" in printed[1]
    assert printed[2:5] == [
        "  output  colour: logits (B, K), K = 8",
        "  output  parts: logits (B, K, h, w), K = 5, h = H/14, w = W/14",
        "  output  depth: depth in metres (B, 1, 4h, 4w), h = H/14, w = W/14",
    ]
    assert "checked with onnxruntime on 4 input shape(s)" in printed[5]

    # The file declares the same shapes, in the input's dimension names, and documents them.
    model = onnx.load(str(out))
    declared = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in model.graph.output
    }
    assert declared == {
        "colour": ["batch", 8],
        "parts": ["batch", 5, "grid_h", "grid_w"],
        "depth": ["batch", 1, "4*grid_h", "4*grid_w"],
    }
    assert [value.name for value in model.graph.input] == ["images"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][2:] == [
        "14*grid_h",
        "14*grid_w",
    ]
    docs = {value.name: value.doc_string for value in model.graph.output}
    assert docs["depth"] == "depth in metres (B, 1, 4h, 4w), h = H/14, w = W/14"
    layouts = read_onnx_metadata(out)["output_layouts"]
    assert layouts["parts"]["task"] == "segmentation"
    assert layouts["parts"]["shape"] == ["B", "K", "h", "w"]
    assert layouts["depth"] == {
        "task": "depth",
        "quantity": "depth in metres",
        "shape": ["B", 1, "4h", "4w"],
        "num_classes": None,
        "description": docs["depth"],
    }
    assert layouts["colour"]["quantity"] == "logits"

    # ... and they are what the graph gives, equal to the heads in PyTorch, at other sizes too.
    heads = load_heads(dense_files.mixed).heads
    assert heads is not None
    frozen = FrozenBackbone.for_heads(load_backbone(files.checkpoint), heads)
    for batch, height, width in ((2, 28, 56), (1, 70, 42)):
        images = torch.randn(batch, 3, height, width)
        got = onnx_outputs(out, images)
        with torch.no_grad():
            expected = heads(frozen(images))
        h, w = height // 14, width // 14
        assert got["colour"].shape == (batch, 8)
        assert got["parts"].shape == (batch, 5, h, w)
        assert got["depth"].shape == (batch, 1, 4 * h, 4 * w)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value.numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_single_depth_head_gives_an_output_called_depth(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "depth.onnx"
    assert export(files, dense_files.depth, out, "--fixed-size") == 0
    printed = capsys.readouterr().out.splitlines()
    assert "28x56, any batch size" in printed[1]
    # A fixed size: the sizes are numbers, 4x the 2x4 patch grid of 28x56 images.
    assert printed[2] == "  output  depth: depth in metres (B, 1, 8, 16)"
    got = onnx_outputs(out, torch.randn(3, 3, 28, 56))
    assert list(got) == ["depth"]
    assert got["depth"].shape == (3, 1, 8, 16)
    assert (got["depth"] > 0).all()


def test_a_segmentation_head_alone_keeps_the_output_name_logits(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "parts.onnx"
    assert export(files, dense_files.segmentation, out, "--no-verify") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2] == "  output  logits: logits (B, K, h, w), K = 5, h = H/14, w = W/14"
    assert len(printed) == 3  # not verified: no line about onnxruntime
    assert read_onnx_metadata(out)["outputs"] == ["logits"]


def test_export_refuses_another_backbone_for_dense_heads(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "export",
        "--heads",
        str(dense_files.depth),
        "--checkpoint",
        str(files.other_checkpoint),
    ]
    assert main([*argv, "--out", str(tmp_path / "d.onnx")]) == 1
    assert "trained on backbone weights with fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()
