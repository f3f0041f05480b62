"""A whole Depther or Segmenter as one ONNX graph: padding, head, clamp and resize inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.dense import Depther, Segmenter, center_pad
from dinov2_heads.export import (
    OnnxExport,
    export_dense_onnx,
    export_onnx,
    read_onnx_metadata,
    verify_dense_onnx,
)
from dinov2_heads.export.onnx_input_checks import FINITE_CHECK
from dinov2_heads.export.onnx_runtime import require_module
from dinov2_heads.features import Features
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead, LinearSegmentationHead
from tests.heads.official_depth import dense_fixtures, fixture_backbone, fixture_head_state
from tests.helpers import randomize

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4
#: Sizes the graph must serve besides the traced one: whole patches (no padding), odd and
#: even padding, tall and wide, and images smaller than a patch.
SIZES = [(28, 42), (126, 252), (127, 253), (100, 37), (401, 97), (10, 13)]


def run_onnx(path: Path, images: Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refused inputs below would log each error as well
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": images.numpy()})
    return np.asarray(output)


def tiny_backbone(registers: bool = False, depth: int = 1) -> nn.Module:
    torch.manual_seed(0)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    return randomize(create_backbone(name, depth=depth, embed_dim=32, num_heads=2))


class WideDepth(nn.Module):
    """A depth head whose raw output leaves its range, so the Depther's clamp matters."""

    min_depth = 1.0
    max_depth = 2.0

    def forward(self, features: Features) -> Tensor:
        return 1.5 + 4 * features.patch_map()[:, :1]


def assert_serves_every_size(path: Path, expected: Any, channels: int) -> None:
    """The graph's output equals ``expected(images)`` at every size of ``SIZES``."""
    for index, (height, width) in enumerate(SIZES):
        images = torch.randn(1 + index % 2, 3, height, width)
        got = run_onnx(path, images)
        with torch.no_grad():
            want = expected(images)
        assert got.shape == (images.shape[0], channels, height, width)
        assert np.abs(got - want.numpy()).max() <= ATOL, (height, width)


@pytest.fixture(scope="module")
def depth_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnnxExport, Depther]:
    torch.manual_seed(1)
    head = LinearDepthHead(32, n_bins=64, max_depth=10.0)
    depther = Depther(tiny_backbone(), head)
    depther.train()  # the export runs in eval mode and gives the mode back
    path = tmp_path_factory.mktemp("dense") / "depther.onnx"
    return export_dense_onnx(depther, path), depther


@pytest.mark.slow
def test_a_depther_becomes_one_graph_for_every_image_size(
    depth_export: tuple[OnnxExport, Depther],
) -> None:
    result, depther = depth_export
    assert depther.training
    assert depther.head.training
    assert result.output_names == ("depth",)
    assert result.dynamic_size
    assert result.dynamic_batch
    assert result.max_abs_diff is not None
    assert result.max_abs_diff["depth"] <= ATOL
    assert len(result.checked_shapes) == 4
    assert {shape[0] for shape in result.checked_shapes} == {1, 3}
    assert all(shape[2] % 14 and shape[3] % 14 for shape in result.checked_shapes)
    depther.eval()
    assert_serves_every_size(result.path, depther, channels=1)
    images = torch.randn(2, 3, 61, 90)
    assert verify_dense_onnx(result.path, depther, images) <= ATOL


@pytest.mark.slow
def test_the_metadata_describes_the_pipeline(depth_export: tuple[OnnxExport, Depther]) -> None:
    result, depther = depth_export
    metadata = read_onnx_metadata(result.path)
    assert metadata["outputs"] == ["depth"]
    assert metadata["dynamic_size"] is True
    assert metadata["input_size"] == [230, 300]
    assert metadata["traced_min_size"] == [15, 15]
    assert metadata["input_checks"] == [FINITE_CHECK]
    assert metadata["heads"]["depth"] == {
        "type": "LinearDepthHead",
        "config": depther.head.config(),
    }
    assert metadata["predictor"] == {
        "type": "Depther",
        "mode": "whole",
        "output": "depth",
        "pad_to_multiple_of": 14,
        "resize": "bilinear, align_corners=False, to the input size",
        "clamp": [0.001, 10.0],
    }


@pytest.mark.slow
def test_the_graph_refuses_non_finite_pixels(depth_export: tuple[OnnxExport, Depther]) -> None:
    result, _ = depth_export
    images = torch.randn(2, 3, 50, 61)
    images[1, 0, 3, 4] = float("nan")
    with pytest.raises(Exception, match=FINITE_CHECK):
        run_onnx(result.path, images)


@pytest.mark.slow
def test_the_clamp_and_a_dpt_head_with_registers(tmp_path: Path) -> None:
    backbone = tiny_backbone(registers=True)
    clamped = Depther(backbone, WideDepth()).eval()
    result = export_dense_onnx(clamped, tmp_path / "wide.onnx", input_size=(50, 64), verify=False)
    assert result.max_abs_diff is None
    images = torch.randn(1, 3, 55, 83)
    raw = clamped.head(clamped.frozen(center_pad(images)))
    # The head alone leaves the range ...
    assert raw.min() < 1.0
    assert raw.max() > 2.0
    depth = run_onnx(result.path, images)
    # ... the graph clamps it (the resize after the clamp may round by one float32 step)
    assert depth.min() >= 1.0 - 1e-6
    assert depth.max() <= 2.0 + 1e-6
    assert np.isclose(depth, 1.0).mean() > 0.01
    assert np.isclose(depth, 2.0).mean() > 0.01
    with torch.no_grad():
        assert np.abs(depth - clamped(images).numpy()).max() <= ATOL

    torch.manual_seed(2)
    dpt = Depther(tiny_backbone(depth=4), DPTDepthHead(32, channels=8, max_depth=10.0)).eval()
    result = export_dense_onnx(dpt, tmp_path / "dpt.onnx", dynamic_batch=False)
    assert [shape[0] for shape in result.checked_shapes] == [1, 1]
    # DPT halves the patch grid once: the trace holds from three patches a side.
    assert read_onnx_metadata(result.path)["traced_min_size"] == [29, 29]
    for height, width in SIZES:
        images = torch.randn(1, 3, height, width)
        with torch.no_grad():
            want = dpt(images).numpy()
        assert np.abs(run_onnx(result.path, images) - want).max() <= ATOL, (height, width)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run_onnx(result.path, torch.randn(2, 3, 56, 56))  # batch size fixed to 1


@pytest.mark.slow
@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_a_segmenter_becomes_one_graph(tmp_path: Path, output: str) -> None:
    torch.manual_seed(3)
    head = LinearSegmentationHead(32, 5, layers=2, class_names=["a", "b", "c", "d", "e"])
    segmenter = Segmenter(tiny_backbone(depth=2), head).eval()
    with torch.no_grad():  # a trained-looking BatchNorm, not the identity of a fresh one
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
    # The export's own check once; the test's sizes below check the other output.
    verify = output == "probabilities"
    path = tmp_path / "seg.onnx"
    result = export_dense_onnx(segmenter, path, output=output, verify=verify)  # type: ignore[arg-type]
    assert result.output_names == (output,)
    assert (result.max_abs_diff is not None) == verify
    expected = segmenter if output == "probabilities" else segmenter.logits
    assert_serves_every_size(result.path, expected, channels=5)
    metadata = read_onnx_metadata(result.path)
    assert metadata["class_names"] == {output: ["a", "b", "c", "d", "e"]}
    assert metadata["predictor"]["output"] == output
    assert "clamp" not in metadata["predictor"]
    if output == "probabilities":
        sums = run_onnx(result.path, torch.randn(1, 3, 40, 50)).sum(axis=1)
        assert np.abs(sums - 1).max() < 1e-5


@pytest.mark.slow
def test_the_official_linear_depth_head_through_onnx(tmp_path: Path) -> None:
    # The fixtures' ViT-S/14 and official linear head: the graph gives the official depth.
    references = torch.load(dense_fixtures() / "depth_refs.pt", weights_only=True)
    head = LinearDepthHead(384)
    head.load_state_dict(fixture_head_state("linear1"))
    depther = Depther(fixture_backbone(), head).eval()
    path = tmp_path / "official.onnx"
    export_dense_onnx(depther, path, verify=False)
    official = references["refs"]["depth_linear1/x224/whole"]
    got = run_onnx(path, references["inputs"]["x224"])
    # Depths of about 40 m (the official bins span 0.001..80 m): float32 rounding only.
    assert np.abs(got - official.numpy()).max() <= ATOL
    images = torch.randn(1, 3, 131, 200)
    with torch.no_grad():
        want = depther(images)
    assert np.abs(run_onnx(path, images) - want.numpy()).max() <= 2e-4


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"mode": "slide", "crop_size": 28, "stride": 14}, "mode='slide'.*PyTorch-only"),
        ({"flip": True}, "flip=True.*PyTorch-only.*flip=False"),
    ],
)
def test_slide_and_flip_stay_pytorch_only(
    tmp_path: Path, settings: dict[str, Any], match: str
) -> None:
    depther = Depther(tiny_backbone(), LinearDepthHead(32), **settings)
    with pytest.raises(ValueError, match=match):
        export_dense_onnx(depther, tmp_path / "x.onnx")
    segmenter = Segmenter(tiny_backbone(), LinearSegmentationHead(32, 3), **settings)
    with pytest.raises(ValueError, match=match):
        export_dense_onnx(segmenter, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_scales_and_wrong_outputs_are_refused(tmp_path: Path) -> None:
    head = LinearSegmentationHead(32, 3)
    multi_scale = Segmenter(tiny_backbone(), head, scales=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"scales.*PyTorch-only"):
        export_dense_onnx(multi_scale, tmp_path / "x.onnx")
    segmenter = Segmenter(tiny_backbone(), head)
    with pytest.raises(ValueError, match="output='probabilities' or 'logits', got 'depth'"):
        export_dense_onnx(segmenter, tmp_path / "x.onnx", output="depth")
    depther = Depther(tiny_backbone(), LinearDepthHead(32))
    with pytest.raises(ValueError, match="output='depth', got 'logits'"):
        export_dense_onnx(depther, tmp_path / "x.onnx", output="logits")
    with pytest.raises(ValueError, match="at least 15 px"):
        export_dense_onnx(depther, tmp_path / "x.onnx", input_size=14)
    with pytest.raises(TypeError, match="an int or \\(H, W\\)"):
        export_dense_onnx(depther, tmp_path / "x.onnx", input_size=(30, 30, 3))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_each_export_function_names_the_other(tmp_path: Path) -> None:
    depther = Depther(tiny_backbone(), LinearDepthHead(32))
    with pytest.raises(TypeError, match="export_dense_onnx\\(predictor, path\\)"):
        export_onnx(depther, depther.head, tmp_path / "x.onnx")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="export_onnx\\(FrozenBackbone\\(backbone\\), heads"):
        export_dense_onnx(depther.frozen, tmp_path / "x.onnx")  # type: ignore[arg-type]


def test_a_missing_onnx_package_names_both_install_commands() -> None:
    with pytest.raises(ImportError) as error:
        require_module("onnx_package_that_is_not_installed")
    message = str(error.value)
    assert "pip install 'dinov2-heads[export]'" in message
    assert "from a checkout: pip install -e '.[export]'" in message


# ---------------------------------------------------------------------------- the command


def saved_backbone(folder: Path) -> nn.Module:
    """A random backbone saved as ``backbone.pth``, 64 wide (the width the file implies)."""
    torch.manual_seed(0)
    backbone = randomize(create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1))
    torch.save(backbone.state_dict(), folder / "backbone.pth")
    return backbone


@pytest.mark.slow
def test_the_export_command_writes_a_whole_image_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads.cli import main
    from dinov2_heads.export import save_heads
    from dinov2_heads.features import FrozenBackbone

    backbone = saved_backbone(tmp_path)
    torch.manual_seed(4)
    head = LinearDepthHead(64, n_bins=32, max_depth=10.0)
    save_heads(tmp_path / "depth.pt", head, backbone=FrozenBackbone.for_heads(backbone, head))
    out = tmp_path / "depther.onnx"
    argv = ["export", "--heads", str(tmp_path / "depth.pt")]
    argv += ["--checkpoint", str(tmp_path / "backbone.pth"), "--out", str(out)]
    assert main([*argv, "--whole-image"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"wrote {out}"
    assert "any H, W, any batch size" in printed[1]
    assert printed[2] == "  output  depth: depth in metres (B, 1, H, W) at the input size"
    assert "checked with onnxruntime on 4 input shape(s)" in printed[3]
    depther = Depther(backbone, head.eval()).eval()
    images = torch.randn(1, 3, 77, 150)
    with torch.no_grad():
        assert np.abs(run_onnx(out, images) - depther(images).numpy()).max() <= ATOL
    assert main([*argv, "--whole-image", "--fixed-size"]) == 1
    assert "leave out --fixed-size" in capsys.readouterr().err


def test_the_export_command_refuses_heads_without_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads.cli import main
    from dinov2_heads.export import save_heads
    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.heads import LinearHead, MultiHead

    backbone = saved_backbone(tmp_path)
    frozen = FrozenBackbone(backbone)
    save_heads(tmp_path / "linear.pt", LinearHead(64, 3), backbone=frozen)
    multi = MultiHead({"a": LinearDepthHead(64), "b": LinearDepthHead(64)})
    save_heads(tmp_path / "multi.pt", multi, backbone=FrozenBackbone.for_heads(backbone, multi))
    for name, message in (
        ("linear.pt", "holds a LinearHead, which gives one answer per image"),
        ("multi.pt", "exactly one depth or segmentation head (found: 'a', 'b';"),
    ):
        argv = ["export", "--heads", str(tmp_path / name), "--whole-image"]
        argv += ["--checkpoint", str(tmp_path / "backbone.pth"), "--out", str(tmp_path / "x.onnx")]
        assert main(argv) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
