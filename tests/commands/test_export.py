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


def test_missing_folders_above_out_are_made_as_pca_and_search_make_them(
    files: Files, dense_files: DenseFiles, tmp_path: Path
) -> None:
    out = tmp_path / "new" / "sub" / "parts.onnx"
    assert export(files, dense_files.segmentation, out, "--no-verify") == 0
    assert read_onnx_metadata(out)["outputs"] == ["logits"]
    assert sorted(path.name for path in out.parent.iterdir()) == ["parts.onnx"]  # no temporary


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


# ---------------------------------------------------------------------------- --whole-image


def whole_image(files: Files, heads: Path, out: Path, *extra: str) -> int:
    return export(files, heads, out, "--whole-image", "--no-verify", *extra)


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error a command fails with (exit code 1), without the command's name."""
    assert main(argv) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    return line.split(": error: ", 1)[1]


@pytest.fixture(scope="module")
def one_dense_among_classifiers(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MultiHead file of a colour classifier and a parts segmentation head."""
    from dinov2_heads.demo import COLOURS, PARTS
    from dinov2_heads.export import save_heads
    from dinov2_heads.heads import LinearHead, LinearSegmentationHead, MultiHead

    torch.manual_seed(5)
    heads = MultiHead(
        {
            "colour": LinearHead(64, len(COLOURS)),
            "parts": LinearSegmentationHead(64, len(PARTS), class_names=PARTS),
        }
    )
    backbone = load_backbone(files.checkpoint)
    path = tmp_path_factory.mktemp("one-dense") / "heads.pt"
    return save_heads(path, heads, backbone=FrozenBackbone.for_heads(backbone, heads))


@pytest.mark.slow
def test_whole_image_takes_the_one_dense_head_among_classifiers(
    files: Files,
    one_dense_among_classifiers: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dinov2_heads.dense import Segmenter

    out = tmp_path / "parts.onnx"
    # As segment and depth do: no --head-name needed when one head of the file is dense.
    assert whole_image(files, one_dense_among_classifiers, out) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == (
        f"  head    parts: LinearSegmentationHead, one of the 2 in {one_dense_among_classifiers}"
    )
    assert printed[3] == (
        "  output  probabilities: class probabilities (B, K, H, W) at the input size"
    )
    heads = load_heads(one_dense_among_classifiers).heads
    assert heads is not None
    segmenter = Segmenter(load_backbone(files.checkpoint), heads["parts"]).eval()
    images = torch.randn(1, 3, 45, 61)  # a 4x5 padded grid: odd one way, even the other
    with torch.no_grad():
        expected = segmenter(images).numpy()
    np.testing.assert_allclose(onnx_outputs(out, images)["probabilities"], expected, atol=1e-4)
    assert read_onnx_metadata(out)["class_names"] == {
        "probabilities": list(heads["parts"].class_names)
    }


@pytest.mark.slow
def test_whole_image_head_name_picks_one_of_several_dense_heads(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads.dense import Depther

    out = tmp_path / "depth.onnx"
    assert whole_image(files, dense_files.mixed, out, "--head-name", "depth") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == f"  head    depth: LinearDepthHead, one of the 3 in {dense_files.mixed}"
    assert printed[3] == "  output  depth: depth in metres (B, 1, H, W) at the input size"
    heads = load_heads(dense_files.mixed).heads
    assert heads is not None
    depther = Depther(load_backbone(files.checkpoint), heads["depth"]).eval()
    images = torch.randn(2, 3, 30, 57)
    with torch.no_grad():
        expected = depther(images).numpy()
    np.testing.assert_allclose(onnx_outputs(out, images)["depth"], expected, atol=1e-4)


def test_whole_image_chooses_the_head_as_segment_and_depth_do(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads.commands._dense_heads import pick_dense_head

    out = tmp_path / "x.onnx"
    base = ["--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "runs")]
    image = str(files.images[0])
    mixed = str(dense_files.mixed)
    held = "colour: LinearHead, parts: LinearSegmentationHead, depth: LinearDepthHead"

    def exported(*extra: str) -> str:
        argv = ["export", "--heads", mixed, "--checkpoint", str(files.checkpoint)]
        return error_of([*argv, "--out", str(out), "--whole-image", *extra], capsys)

    # Two dense heads and no --head-name: which one is not guessed.
    assert exported() == (
        f"{mixed} must hold exactly one depth or segmentation head (found: 'parts', 'depth'; "
        f"the file holds {held}); give a file with one depth or segmentation head, or pick one "
        "with --head-name"
    )
    # A name the file does not hold, or a head that is not dense: found none.
    for name in ("nope", "colour"):
        message = exported("--head-name", name)
        assert message == (
            f"{mixed} must hold exactly one depth or segmentation head (found: none; the file "
            f"holds {held}); give a file with one depth or segmentation head, or pick one with "
            "--head-name"
        )
        # ... word for word what segment and depth say, but for the kind of head they run.
        segment = error_of(["segment", image, "--heads", mixed, *base, "--head-name", name], capsys)
        depth = error_of(["depth", image, "--heads", mixed, *base, "--head-name", name], capsys)
        assert segment == message.replace(
            "depth or segmentation head", "segmentation head"
        ).replace("give a file with one segmentation head", "give a released head file")
        assert depth == message.replace("depth or segmentation head", "depth head").replace(
            "give a file with one depth head",
            "give a file with one LinearDepthHead or DPTDepthHead",
        )
        # The helper the export uses gives their messages for their kinds.
        heads = load_heads(dense_files.mixed).heads
        for task, said in (("segmentation", segment), ("depth", depth), (None, message)):
            with pytest.raises(ValueError, match="must hold exactly one") as error:
                pick_dense_head(heads, mixed, name, task)
            assert str(error.value) == said
    assert not out.exists()


def test_head_name_without_whole_image_is_refused(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.onnx"
    message = error_of(
        [
            "export",
            "--heads",
            str(dense_files.mixed),
            "--checkpoint",
            str(files.checkpoint),
            "--out",
            str(out),
            "--head-name",
            "depth",
        ],
        capsys,
    )
    assert "--head-name picks the head of a --whole-image graph" in message
    assert "Add --whole-image" in message
    assert not out.exists()


def test_a_file_of_one_head_takes_no_head_name(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As for segment and depth: the head of a file of one has no name to pick it by.
    argv = ["export", "--heads", str(dense_files.depth), "--checkpoint", str(files.checkpoint)]
    message = error_of(
        [*argv, "--out", str(tmp_path / "x.onnx"), "--whole-image", "--head-name", "depth"],
        capsys,
    )
    assert "(found: none; the file holds head: LinearDepthHead)" in message


def test_a_file_of_classifiers_only_is_sent_to_plain_export(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "--heads", str(files.heads), "--checkpoint", str(files.checkpoint)]
    message = error_of([*argv, "--out", str(tmp_path / "x.onnx"), "--whole-image"], capsys)
    assert message == (
        "--whole-image exports a depth or segmentation head (a type in DENSE_TASKS), "
        f"{files.heads} holds 2 heads (colour: LinearHead, brand: Conv1dNeck), which give one "
        "answer per image; export it without --whole-image"
    )


def test_the_help_explains_head_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--head-name HEAD_NAME with --whole-image and a heads file of several heads" in text
    assert "--whole-image --head-name depth" in text
