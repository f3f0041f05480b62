"""Segmentation heads through save_heads / load_heads, ONNX export and the segment command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.cli import main
from dinov2_heads.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    load_mask,
    normalize,
    pil_to_tensor,
    to_float,
)
from dinov2_heads.demo import PARTS, SyntheticVehicles
from dinov2_heads.dense import Segmenter
from dinov2_heads.export import export_onnx, load_heads, save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearHead, LinearSegmentationHead, MultiHead
from tests.dense.conftest import tiny_backbone


def multi_head(dim: int = 32) -> MultiHead:
    torch.manual_seed(0)
    parts = LinearSegmentationHead(dim, len(PARTS), layers=2, class_names=PARTS)
    with torch.no_grad():
        parts.conv_seg.weight.normal_()
        parts.bn.running_mean.normal_(std=0.3)
    return MultiHead({"body": LinearHead(dim, 4), "parts": parts}).eval()


def test_save_and_load_heads_keep_segmentation_heads(tmp_path: Path) -> None:
    backbone, heads = tiny_backbone(depth=3), multi_head()
    frozen = FrozenBackbone.for_heads(backbone, heads)
    path = save_heads(tmp_path / "heads.pt", heads, backbone=frozen, input_size=(126, 252))
    loaded = load_heads(path)
    assert isinstance(loaded.heads, MultiHead)
    parts = loaded.heads["parts"]
    assert isinstance(parts, LinearSegmentationHead)
    assert (parts.layers, parts.class_names) == (2, PARTS)
    x = torch.randn(2, 3, 126, 252)
    features = frozen(x)
    assert torch.equal(parts.eval()(features), heads["parts"](features))


def test_onnx_graph_of_a_segmentation_head_has_dynamic_sizes(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    backbone, heads = tiny_backbone(depth=3), multi_head()
    frozen = FrozenBackbone.for_heads(backbone, heads)
    export = export_onnx(frozen, heads, tmp_path / "heads.onnx", input_size=(56, 84))
    assert export.path.is_file()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    for size in ((56, 84), (70, 42)):
        x = torch.randn(1, 3, *size)
        names = [output.name for output in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, {"images": x.numpy()}), strict=True))
        with torch.no_grad():
            expected = heads(frozen(x))["parts"]
        got = torch.from_numpy(outputs["parts"])
        assert got.shape == (1, len(PARTS), size[0] // 14, size[1] // 14)
        assert (got - expected).abs().max() < 1e-4


def test_segment_command_with_a_saved_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 64 wide with one attention head: load_backbone infers the head count as D / 64.
    torch.manual_seed(1)
    backbone = create_backbone("dinov2_vits14", depth=3, embed_dim=64, num_heads=1, img_size=56)
    heads = multi_head(64)
    checkpoint = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), checkpoint)
    saved = save_heads(tmp_path / "heads.pt", heads, backbone=FrozenBackbone(backbone))
    vehicles = SyntheticVehicles(1, seed=0, size=(40, 60))
    vehicles.render(0).save(tmp_path / "car.png")
    out = tmp_path / "labels"
    argv = ["segment", str(tmp_path / "car.png"), "--heads", str(saved), "--checkpoint",
            str(checkpoint), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert any(name in printed for name in PARTS)
    labels = load_mask(out / "car.png")
    pixels = to_float(pil_to_tensor(load_image(tmp_path / "car.png")))
    x = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)  # at the image's own 40 x 60
    with torch.no_grad():
        expected = Segmenter(backbone, heads["parts"]).eval().predict(x[None])[0]
    assert labels.shape == (40, 60)
    assert torch.equal(labels, expected)
