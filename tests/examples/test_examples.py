"""Every script in examples/ runs on its small synthetic default and produces what it says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.demo import BODY_TYPES, BRANDS, COLOURS, ORIENTATIONS, SyntheticVehicles
from dinov2_heads.export import load_heads
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(printed: str, header: str) -> dict[str, list[str]]:
    """The rows of the table whose header line starts with ``header``, by first cell."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(("saved", "files", "best")):
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_every_example_has_main_and_a_test() -> None:
    scripts = sorted(path.stem for path in EXAMPLES.glob("*.py"))
    assert scripts == [
        "backbone_shapes",
        "heads_without_training",
        "linear_probe",
        "migrate_from_blog",
        "pca_features",
        "predict",
        "train_depth",
        "vehicle_attributes",
        "vehicle_brand",
        "vehicle_parts",
    ]
    for name in scripts:
        assert callable(example(name).main)


def test_backbone_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    example("backbone_shapes").main(["--depth", "1"])
    printed = capsys.readouterr().out
    assert "'x_norm_patchtokens': (2, 162, 384)" in printed


def test_linear_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-images", "40", "--epochs", "2", "--n-blocks", "1", "2"]
    assert example("linear_probe").main([*argv, "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed, "n_blocks")
    assert len(rows) >= 1
    assert "best: classifier_" in printed
    saved = load_heads(tmp_path / "best_head.pt")
    assert isinstance(saved.heads, LinearHead)
    assert saved.heads.n_blocks in (1, 2)
    # Class names are the colour folders that the 40 synthetic images fill.
    names = saved.class_names["head"]
    assert names is not None
    assert set(names) <= set(COLOURS)
    assert saved.extra["preprocessing"] == "vehicle_crop"
    assert 0.0 <= saved.extra["val_accuracy"] <= 1.0
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "features" / "train" / "manifest.json").is_file()


def test_confusion_matrix_counts() -> None:
    matrix = example("linear_probe").confusion_matrix(
        torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]), 3
    )
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_vehicle_brand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-images", "32", "--epochs", "1", "--batch-size", "8"]
    assert example("vehicle_brand").main(argv) == 0
    rows = table_rows(capsys.readouterr().out, "head")
    assert set(rows) == {"conv1d_neck", "linear_head"}
    assert rows["conv1d_neck"][0] == "Conv1dNeck"
    neck = load_heads(tmp_path / "conv1d_neck.pt")
    linear = load_heads(tmp_path / "linear_head.pt")
    assert isinstance(neck.heads, Conv1dNeck)
    assert neck.heads.grid == (9, 18)  # 126x252 crops
    assert isinstance(linear.heads, LinearHead)
    assert neck.class_names["head"] == linear.class_names["head"] == tuple(list(BRANDS)[:4])


def test_vehicle_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-images", "32", "--epochs", "2", "--missing", "0.3"]
    assert example("vehicle_attributes").main(argv) == 0
    rows = table_rows(capsys.readouterr().out, "head")
    assert set(rows) == {"body", "colour", "orientation"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"body", "colour", "orientation"}
    for name, row in metrics.items():
        # 24 training images, some labels blanked (the heads learn from the rest).
        assert 0 < row["train_labels"] < 24, name
        assert row["val_labels"] <= 8
    saved = load_heads(tmp_path / "attribute_heads.pt")
    assert isinstance(saved.heads, MultiHead)
    assert saved.class_names["orientation"] is not None
    assert set(saved.class_names["orientation"]) <= set(ORIENTATIONS)
    assert set(saved.class_names["body"] or ()) <= set(BODY_TYPES)


def test_migrate_from_blog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = example("migrate_from_blog")
    assert module.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "loaded 77, missing 0, unexpected 0, mismatched 0, dropped by rename 35" in printed
    assert table_rows(printed, "image")["synthetic"][:1] == ["vehicle"]
    saved = load_heads(tmp_path / "migrated_heads.pt")
    assert saved.head_names == ("country_cls", "cn_cls", "ct_cls")
    assert saved.class_names["ct_cls"] == tuple(f"ct_cls_{i}" for i in range(6))
    saved.check_backbone(load_backbone(tmp_path / "backbone.pth"))

    # The blog file itself, class names from JSON, and images from a folder.
    names = {"ct_cls": ["bus", "car", "suv", "truck", "van", "other"]}
    (tmp_path / "names.json").write_text(json.dumps(names))
    images = tmp_path / "images"
    images.mkdir()
    SyntheticVehicles(1, seed=5).render(0).save(images / "a.png")
    argv = ["--checkpoint", str(tmp_path / "blog.pth"), "--images", str(images)]
    out = tmp_path / "again"
    assert (
        module.main([*argv, "--class-names", str(tmp_path / "names.json"), "--out", str(out)]) == 0
    )
    row = table_rows(capsys.readouterr().out, "image")[str(images / "a.png")]
    assert row[4] in names["ct_cls"]

    # A wrong input size is caught before loading: the necks hold 162 patch channels.
    with pytest.raises(SystemExit, match="162 patch tokens"):
        module.main([*argv, "--size", "224", "224", "--out", str(out)])


def test_pca_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pca.png"
    assert example("pca_features").main(["--num-images", "2", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    from PIL import Image

    with Image.open(out) as picture:
        assert picture.width == 4 + 2 * (2 * 252 + 4 + 4)
        assert picture.height > 4 + 126 + 4  # the caption goes below the pictures
        assert "random weights" in picture.info["Description"]


def test_predict(capsys: pytest.CaptureFixture[str]) -> None:
    assert example("predict").main(["--demo-images", "16", "--json", "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(printed[printed.index("[") :])
    assert len(rows) == 4  # the demo's four sample images
    for row in rows:
        assert set(row["heads"]) == {"body", "colour", "orientation", "brand"}
        assert all(len(top) == 2 for top in row["heads"].values())
        assert row["heads"]["colour"][0]["label"] in COLOURS
        first, second = row["heads"]["body"]
        assert first["probability"] >= second["probability"]


def test_linear_probe_with_a_checkpoint_repeats_with_its_seed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
    argv = ["--checkpoint", str(tmp_path / "backbone.pth"), "--num-images", "16", "--epochs", "1"]
    saved = []
    for run in ("first", "second"):
        torch.manual_seed(len(run))  # the caller's random state must not matter
        out = tmp_path / run
        assert example("linear_probe").main([*argv, "--n-blocks", "1", "--out", str(out)]) == 0
        saved.append(load_heads(out / "best_head.pt"))
    assert saved[0].extra["grid_head"] == saved[1].extra["grid_head"]
    assert all(
        torch.equal(saved[0].state_dict[k], saved[1].state_dict[k]) for k in saved[0].state_dict
    )


def test_heads_without_training(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--num-images", "48", "--c-every", "15", "--max-iter", "50", "--epochs", "2"]
    assert example("heads_without_training").main(args) == 0
    rows = table_rows(capsys.readouterr().out, "method")
    assert list(rows) == ["k-NN", "logistic", "linear"]
    for cells in rows.values():
        assert 0.0 <= float(cells[-1]) <= 100.0


def test_linear_probe_without_matplotlib_skips_the_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["--out", str(tmp_path), "--num-images", "24", "--epochs", "1", "--n-blocks", "1"]
    assert example("linear_probe").main(argv) == 0
    captured = capsys.readouterr()
    assert "skipped the confusion matrix picture: it needs matplotlib" in captured.out
    assert "(its confusion matrix)" not in captured.out
    assert not (tmp_path / "confusion.png").exists()
    assert (tmp_path / "best_head.pt").is_file()
    # Long steps show their progress bars (on stderr).
    assert "extracting features" in captured.err
    assert "epoch 1/1" in captured.err
