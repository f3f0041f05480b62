from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dinov2_heads.export import export_onnx, read_onnx_metadata, verify_onnx
from dinov2_heads.export.onnx import ExportGraph, OnnxExport
from dinov2_heads.export.onnx_input_checks import FINITE_CHECK, SIZE_CHECK
from dinov2_heads.export.onnx_tracing import save_program
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead
from tests.export.conftest import TokenHead, official_fixture_backbone, tiny_frozen

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4


def run_onnx(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refused inputs below would log each error as well
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {"images": images.numpy()}))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vits14_d2", "vits14_reg4_d2"])
def test_dynamic_export_matches_the_official_outputs_and_pytorch(
    fixtures_dir: Path, tmp_path: Path, name: str
) -> None:
    # The official 2-block models: the plain one resizes its position table with the +0.1
    # offset, the register one with antialiasing; both must stay exact at any size.
    frozen = FrozenBackbone(official_fixture_backbone(fixtures_dir, name), n_last_blocks=2)
    torch.manual_seed(1)
    brand = LinearHead(384, 5, n_blocks=2, class_names=["a", "b", "c", "d", "e"])
    heads = MultiHead({"cls": TokenHead("class"), "patch": TokenHead("patch"), "brand": brand})
    heads.train()
    path = tmp_path / "model.onnx"

    result = export_onnx(frozen, heads, path)

    assert result.dynamic_batch
    assert result.dynamic_size
    assert result.output_names == ("cls", "patch", "brand")
    assert result.max_abs_diff is not None
    assert max(result.max_abs_diff.values()) <= ATOL
    assert len(result.checked_shapes) == 4  # two batch sizes x two image sizes
    assert heads.training
    assert brand.training

    reference = torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)
    cls, patch, _ = run_onnx(path, reference["input"])
    official_cls = reference[f"{name}/forward_features/x_norm_clstoken"]
    official_patch = reference[f"{name}/forward_features/x_norm_patchtokens"]
    assert np.abs(cls - official_cls.numpy()).max() <= ATOL
    assert np.abs(patch - official_patch.numpy()).max() <= ATOL

    # Sizes other than the traced one: the vehicle crop, the table's own 518 (kept as is),
    # a grid larger than the table, and batch sizes 1 and 3.
    for shape in [(1, 3, 126, 252), (3, 3, 518, 518), (1, 3, 560, 70)]:
        images = torch.randn(shape)
        diffs = verify_onnx(path, frozen, heads, images)
        assert max(diffs.values()) <= ATOL, (shape, diffs)
        grid = (shape[2] // 14) * (shape[3] // 14)
        assert run_onnx(path, images)[1].shape == (shape[0], grid, 384)

    metadata = read_onnx_metadata(path)
    assert metadata["dynamic_size"] is True
    assert metadata["outputs"] == ["cls", "patch", "brand"]
    assert metadata["class_names"]["brand"] == ["a", "b", "c", "d", "e"]
    assert metadata["patch_size"] == 14
    assert metadata["n_last_blocks"] == 2


@pytest.mark.slow
def test_a_fixed_grid_head_gives_a_fixed_size_graph(tmp_path: Path) -> None:
    frozen = tiny_frozen(registers=True)
    heads = MultiHead({"brand": Conv1dNeck((2, 4), 64, 3), "colour": LinearHead(64, 4)})
    path = tmp_path / "neck.onnx"

    result = export_onnx(frozen, heads, path, input_size=(28, 56))

    assert not result.dynamic_size
    assert result.input_size == (28, 56)
    assert result.max_abs_diff is not None
    assert max(result.max_abs_diff.values()) <= ATOL
    assert [shape[0] for shape in result.checked_shapes] == [1, 3]
    diffs = verify_onnx(path, frozen, heads, torch.randn(5, 3, 28, 56))
    assert max(diffs.values()) <= ATOL
    metadata = read_onnx_metadata(path)
    assert metadata["dynamic_size"] is False
    assert metadata["input_size"] == [28, 56]
    # The runtime itself holds a fixed size to it; the graph adds the check of the pixels only.
    assert metadata["input_checks"] == [FINITE_CHECK]
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run_onnx(path, torch.randn(1, 3, 42, 56))


def test_dynamic_size_with_a_fixed_grid_head_is_refused(tmp_path: Path) -> None:
    frozen = tiny_frozen()
    neck = Conv1dNeck((9, 18), 64, 3)
    with pytest.raises(ValueError, match="dynamic_size=False"):
        export_onnx(frozen, neck, tmp_path / "x.onnx", dynamic_size=True)
    with pytest.raises(ValueError, match="input_size=\\(126, 252\\)"):
        export_onnx(frozen, neck, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="built for 162"):
        export_onnx(frozen, neck, tmp_path / "x.onnx", input_size=224)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": 125}, ValueError, "multiples of the patch size 14"),
        ({"input_size": 14}, ValueError, "at least 28 px"),
        ({"input_size": (224, 224, 3)}, TypeError, "an int or \\(H, W\\)"),
        ({"opset": 17}, ValueError, "opset must be 18"),
    ],
)
def test_bad_arguments_are_refused_before_exporting(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        export_onnx(tiny_frozen(), LinearHead(64, 3), tmp_path / "x.onnx", **kwargs)


def test_only_a_frozen_backbone_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="FrozenBackbone\\(backbone"):
        export_onnx(tiny_frozen().backbone, LinearHead(64, 3), tmp_path / "x.onnx")  # type: ignore[arg-type]


def test_bfloat16_weights_cannot_be_verified(tmp_path: Path) -> None:
    frozen = FrozenBackbone(tiny_frozen().backbone, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="verify=False"):
        export_onnx(frozen, LinearHead(64, 3), tmp_path / "x.onnx")


def test_export_graph_returns_the_heads_outputs_in_order() -> None:
    frozen = tiny_frozen(n_last_blocks=1)
    heads = MultiHead({"b": LinearHead(64, 2), "a": LinearHead(64, 3)}).eval()
    graph = ExportGraph(frozen, heads)
    images = torch.randn(2, 3, 28, 42)
    out = graph(images)
    expected = heads(frozen(images))
    assert graph.output_names == ("b", "a")
    assert torch.equal(out[0], expected["b"])
    assert torch.equal(out[1], expected["a"])
    single = ExportGraph(frozen, LinearHead(64, 3).eval())
    assert single.output_names == ("logits",)
    assert single(images)[0].shape == (2, 3)


class _FakeProgram:
    """Writes a model file and, like a model over 2 GB, a ``.data`` file named after it."""

    def save(self, destination: str) -> None:
        import onnx
        from onnx import helper, numpy_helper

        tensor = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "w")
        model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[tensor]))
        location = Path(destination).name + ".data"
        onnx.save_model(
            model, destination, save_as_external_data=True, location=location, size_threshold=0
        )


def test_a_model_with_external_data_is_saved_under_its_final_names(tmp_path: Path) -> None:
    import onnx

    target = tmp_path / "big.onnx"
    save_program(_FakeProgram(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    model = onnx.load(str(target))  # loads the weights from the .data file by its recorded name
    assert list(onnx.numpy_helper.to_array(model.graph.initializer[0])) == [1.0, 2.0]


class _FailingProgram(_FakeProgram):
    """Writes both files, then fails, as a save cut short by a full disk would."""

    def save(self, destination: str) -> None:
        super().save(destination)
        raise OSError(28, "No space left on device")


def test_a_failed_save_leaves_the_earlier_files_and_no_temporary_data(tmp_path: Path) -> None:
    target = tmp_path / "big.onnx"
    save_program(_FakeProgram(), target)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OSError, match="No space left"):
        save_program(_FailingProgram(), target)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("heads", "input_size", "match"),
    [
        (Conv1dNeck((2, 4), 64, 3), (56, 28), "built for a 2x4 grid .* a 4x2 grid"),
        (LinearHead(64, 3, n_blocks=2), 28, "n_last_blocks=2"),
        (MultiHead({"a": LinearHead(64, 3), "b": LinearHead(32, 2)}), 28, "D = 32"),
    ],
)
def test_heads_that_cannot_read_the_features_fail_with_their_own_error(
    tmp_path: Path, heads: torch.nn.Module, input_size: Any, match: str
) -> None:
    # The heads' own message, before torch.export wraps it in pages of exporter advice.
    with pytest.raises(ValueError, match=match):
        export_onnx(tiny_frozen(), heads, tmp_path / "x.onnx", input_size=input_size)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_size_for_a_neck_with_a_grid_names_its_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_size=\\(28, 56\\)"):
        export_onnx(tiny_frozen(), Conv1dNeck((2, 4), 64, 3), tmp_path / "x.onnx")


# ---------------------------------------------------------------------------- input checks

SIZE_REFUSED = SIZE_CHECK.format(patch=14)


@pytest.fixture(scope="module")
def checked_export(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[OnnxExport, FrozenBackbone, MultiHead]:
    # compile=True: the export must neither need nor disturb the frozen backbone's compilation.
    frozen = FrozenBackbone(tiny_frozen().backbone, compile=True)
    brand = LinearHead(64, 3, class_names=["audi", "byd", "ford"])
    heads = MultiHead({"brand": brand, "cls": TokenHead("class")})
    result = export_onnx(frozen, heads, tmp_path_factory.mktemp("onnx") / "checked.onnx")
    return result, frozen, heads


@pytest.mark.slow
def test_the_dynamic_graph_refuses_sizes_pytorch_refuses(
    checked_export: tuple[OnnxExport, FrozenBackbone, MultiHead],
) -> None:
    result, frozen, heads = checked_export
    good = torch.randn(2, 3, 42, 70)
    assert max(verify_onnx(result.path, frozen, heads, good).values()) <= ATOL
    eager = FrozenBackbone(frozen.backbone)
    for shape in [(1, 3, 125, 250), (1, 3, 126, 250), (2, 3, 43, 70), (1, 3, 13, 28)]:
        images = torch.randn(shape)
        with pytest.raises(ValueError, match="multiple"):
            eager(images)  # PyTorch refuses ...
        with pytest.raises(Exception, match=SIZE_REFUSED):
            run_onnx(result.path, images)  # ... and so does the graph, naming its check


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_graph_refuses_non_finite_pixels(
    checked_export: tuple[OnnxExport, FrozenBackbone, MultiHead], bad: float
) -> None:
    result, _, _ = checked_export
    images = torch.randn(3, 3, 28, 42)
    images[1, 2, 5, 7] = bad  # one pixel of one image of the batch
    with pytest.raises(Exception, match=FINITE_CHECK):
        run_onnx(result.path, images)
    # The largest finite pixels pass the check (what the backbone makes of them is another matter).
    run_onnx(result.path, torch.full((1, 3, 28, 42), torch.finfo(torch.float32).max))


@pytest.mark.slow
def test_the_metadata_describes_the_heads_and_the_checks(
    checked_export: tuple[OnnxExport, FrozenBackbone, MultiHead],
) -> None:
    result, frozen, heads = checked_export
    metadata = read_onnx_metadata(result.path)
    assert metadata["input_checks"] == [SIZE_REFUSED, FINITE_CHECK]
    assert metadata["heads"]["brand"] == {"type": "LinearHead", "config": heads["brand"].config()}
    assert metadata["heads"]["cls"]["type"].endswith("TokenHead")
    assert metadata["heads"]["cls"]["config"] is None
    assert metadata["class_names"] == {"brand": ["audi", "byd", "ford"], "cls": None}
    assert frozen._compiled is None  # exporting compiled nothing and cached nothing


@pytest.mark.slow
def test_without_the_finite_check_nan_pixels_give_nan_outputs(tmp_path: Path) -> None:
    frozen = tiny_frozen()
    path = tmp_path / "unchecked.onnx"
    result = export_onnx(frozen, LinearHead(64, 3), path, check_finite=False, verify=False)
    assert read_onnx_metadata(path)["input_checks"] == [SIZE_REFUSED]
    images = torch.randn(1, 3, 28, 28)
    images[0, 0, 0, 0] = float("nan")
    (logits,) = run_onnx(result.path, images)
    assert np.isnan(logits).all()
    with pytest.raises(Exception, match=SIZE_REFUSED):
        run_onnx(result.path, torch.randn(1, 3, 28, 29))


def test_read_onnx_metadata_says_what_a_file_is_not(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model at all\n" * 10)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "weights.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ["text.onnx", "weights.onnx", "empty.onnx"]:
        with pytest.raises(ValueError, match="is not an ONNX file"):
            read_onnx_metadata(tmp_path / name)
    other = helper.make_model(helper.make_graph([], "g", [], []))
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="no dinov2_heads metadata"):
        read_onnx_metadata(tmp_path / "other.onnx")


class EarlyBlockHead(torch.nn.Module):
    """Returns the patch tokens of block 0 before the final norm, as a dense head reads them."""

    def forward(self, features: Features) -> torch.Tensor:
        return features.block(0, norm=False)[1]


@pytest.mark.slow
def test_the_frozen_backbones_chosen_blocks_are_exported(tmp_path: Path) -> None:
    frozen = FrozenBackbone(tiny_frozen(depth=2).backbone, blocks=[(0, False)])
    path = tmp_path / "blocks.onnx"
    export_onnx(frozen, EarlyBlockHead(), path, input_size=(28, 42))
    images = torch.randn(2, 3, 42, 56)
    (tokens,) = run_onnx(path, images)
    expected = frozen(images).block(0, norm=False)[1]
    assert np.abs(tokens - expected.numpy()).max() <= ATOL
