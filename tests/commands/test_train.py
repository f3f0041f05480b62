"""``dinov2-heads train``: feature store -> heads file + results.json, then predict and export."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import FeatureDataset, FeatureStore
from dinov2_heads.cli import main
from dinov2_heads.export import load_heads
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

from .conftest import Files


@pytest.fixture(scope="module")
def stores(files: Files, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A class-folder store (pooled) and a manifest store with patch tokens and four columns."""
    root = tmp_path_factory.mktemp("stores")
    common = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--size", "28", "56"]
    folder, attributes = root / "by_body", root / "attributes"
    assert main([*common, "--out", str(folder), str(files.folder)]) == 0
    keep = ["--keep", "patch_tokens"]
    assert main([*common, "--out", str(attributes), *keep, str(files.manifest)]) == 0
    return {"folder": folder, "attributes": attributes}


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_grid_keeps_the_best_head_with_its_class_names(
    files: Files, stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe"
    argv = ["--quiet", "train", str(stores["folder"]), "--out", str(out), "--val-fraction", "0.25"]
    assert main([*argv, "--epochs", "2", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    # One block in the store: 13 learning rates x avgpool on/off, best first.
    assert "training 26 linear heads" in printed
    assert "--n-last-blocks 4 for the official 52" in printed
    table = printed.split("best first")[1].split("\n\n")[0].strip().splitlines()[1:]
    assert table[0].split()[:2] == ["n_blocks", "avgpool"]
    assert len(table) == 1 + 26

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "grid"
    assert (results["num_train"], results["num_val"]) == (6, 2)
    accuracies = [row["accuracy"] for row in results["grid"]]
    assert len(accuracies) == 26
    assert results["best"]["accuracy"] == max(accuracies)
    assert f"best: {results['best']['name']}" in printed

    saved = load_heads(out / "heads.pt")
    assert isinstance(saved.heads, MultiHead)
    (name,) = saved.head_names
    head = saved.heads[name]
    assert isinstance(head, LinearHead)
    assert head.class_names == ("bus", "sedan", "suv", "truck")
    assert saved.extra["val_accuracy"] == {name: results["best"]["accuracy"]}
    # The heads know the backbone the store was extracted with: predict and export check it.
    store = FeatureStore.open(stores["folder"])
    assert saved.backbone_fingerprint == store.fingerprint
    assert saved.input_size == (28, 56)

    # The best head's saved weights give the accuracy reported for it.
    rows = torch.tensor([row for row in range(8) if row not in _train_rows(results, 8)])
    features = store.features(rows)
    labels = store.labels(rows)
    assert isinstance(labels, torch.Tensor)
    hits = (head(features).argmax(dim=-1) == labels).float().mean()
    assert float(hits) == pytest.approx(results["best"]["accuracy"])

    predicted = ["predict", "--heads", str(out / "heads.pt"), "--checkpoint", str(files.checkpoint)]
    assert main([*predicted, str(files.folder / "bus")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", name]
    assert all(line.split()[1] in head.class_names for line in table[1:])


def _train_rows(results: dict[str, object], count: int) -> set[int]:
    """The rows train used: the same seeded permutation, minus the held-out share."""
    seed = results["seed"]
    assert isinstance(seed, int)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = int(results["num_val"])  # type: ignore[call-overload]
    return set(order[held:].tolist())


def test_a_spec_trains_a_multihead(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        tmp_path / "heads.json",
        json.dumps(
            {
                "heads": {
                    "colour": {"type": "LinearHead"},
                    "brand": {"type": "Conv1dNeck", "config": {"dropout": 0.1}},
                    "kind": {"type": "LinearHead", "label": "body", "config": {"avgpool": False}},
                },
                "epochs": 2,
                "lr": 0.01,
            }
        ),
    )
    out = tmp_path / "trained"
    store = str(stores["attributes"])
    # Validated on its own training store, so the check below can use every sample.
    argv = ["--quiet", "train", store, "--heads", str(spec), "--val", store, "--out", str(out)]
    assert main([*argv, "--batch-size", "4", "--format", "safetensors"]) == 0
    printed = capsys.readouterr().out
    assert "epochs of batch 4, AdamW lr 0.01" in printed  # the spec's lr, the option's batch

    saved = load_heads(out / "heads.safetensors")
    heads = saved.heads
    assert isinstance(heads, MultiHead)
    assert heads.names == ("colour", "brand", "kind")
    assert isinstance(heads["brand"], Conv1dNeck)
    assert heads["brand"].drop.p == 0.1
    assert isinstance(heads["kind"], LinearHead)
    assert heads["kind"].avgpool is False
    # Class names as extract recorded them for each column.
    recorded = json.loads((stores["attributes"] / "dataset.json").read_text())["class_names"]
    assert heads["kind"].class_names == tuple(recorded["body"])
    assert heads["brand"].class_names == tuple(recorded["brand"])
    assert heads["colour"].class_names == tuple(recorded["colour"])
    assert heads["colour"].num_classes == len(recorded["colour"])

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "spec"
    assert results["labels"] == {"colour": "colour", "brand": "brand", "kind": "body"}
    # The reported accuracy is what the saved heads give on the labelled samples.
    features, labels = next(iter(FeatureDataset(FeatureStore.open(store)).loader(64)))
    outputs = heads(features)
    for name, column in results["labels"].items():
        known = labels[column] >= 0
        hits = outputs[name].argmax(dim=-1)[known] == labels[column][known]
        assert results["heads"][name]["accuracy"] == pytest.approx(float(hits.float().mean()))
        assert results["heads"][name]["count"] == int(known.sum())


def test_a_spec_on_class_folders_learns_their_label(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "heads.json",
        '{"heads": {"body": {"type": "LinearHead", "label": "label"}}, "epochs": 1}',
    )
    out = tmp_path / "trained"
    argv = ["--quiet", "train", str(stores["folder"]), "--heads", str(spec), "--out", str(out)]
    assert main([*argv, "--batch-size", "4"]) == 0
    heads = load_heads(out / "heads.pt").heads
    assert isinstance(heads, MultiHead)
    assert heads["body"].class_names == FeatureStore.open(stores["folder"]).class_names["label"]
    assert json.loads((out / "results.json").read_text())["labels"] == {"body": "label"}


def test_a_toml_spec(stores: dict[str, Path], tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "heads.toml",
        '[heads.colour]\ntype = "LinearHead"\n\n[heads.colour.config]\navgpool = false\n',
    )
    out = tmp_path / "trained"
    argv = ["--quiet", "train", str(stores["attributes"]), "--heads", str(spec)]
    assert main([*argv, "--out", str(out), "--epochs", "1", "--batch-size", "4"]) == 0
    heads = load_heads(out / "heads.pt").heads
    assert isinstance(heads, MultiHead)
    assert isinstance(heads["colour"], LinearHead)
    assert heads["colour"].avgpool is False


@pytest.mark.parametrize(
    ("store", "spec", "message"),
    [
        ("attributes", None, "has the label columns body, colour, orientation, brand; choose"),
        ("attributes", '{"heads": {"colour": {"type": "Mlp"}}}', "unknown head type 'Mlp'"),
        ("attributes", '{"heads": {"wheels": {"type": "LinearHead"}}}', "lacks; its columns are"),
        ("attributes", '{"heads": {"colour": {"kind": "LinearHead"}}}', "needs a type"),
        ("attributes", '{"heads": {"colour": {"type": "LinearHead"}}, "lr ": 1}', "unknown key"),
        ("attributes", '{"heads": ', "is not valid JSON"),
        ("folder", '{"heads": {"colour": {"type": "LinearHead"}}}', "its columns are label"),
        (
            "attributes",
            '{"heads": {"colour": {"type": "LinearHead", "loss": {"class_weights": [1]}}}}',
            "has loss settings, which dense heads (segmentation, depth) take",
        ),
    ],
    ids=["several-columns", "type", "column", "no-type", "key", "json", "folder-label", "loss"],
)
def test_mistakes_are_one_line(
    stores: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: str,
    spec: str | None,
    message: str,
) -> None:
    argv = ["train", str(stores[store]), "--out", str(tmp_path / "out")]
    if spec is not None:
        argv += ["--heads", str(write_spec(tmp_path / "spec.json", spec))]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("dinov2-heads train: error: ")
    assert message in error
    assert len(error.strip().splitlines()) == 1


def test_a_dense_head_is_refused_before_training(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        tmp_path / "spec.json", '{"heads": {"body": {"type": "LinearSegmentationHead"}}}'
    )
    argv = ["train", str(stores["attributes"]), "--heads", str(spec), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "head 'body' is a LinearSegmentationHead, a dense head" in error
    assert "extract it with --masks FOLDER or --depths FOLDER" in error
    assert not (tmp_path / "o" / "heads.pt").exists()


def test_a_neck_on_pooled_features_says_to_keep_patch_tokens(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pooled = tmp_path / "pooled"
    common = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--size", "28", "56"]
    assert main([*common, "--out", str(pooled), str(files.manifest)]) == 0
    spec = write_spec(tmp_path / "spec.json", '{"heads": {"brand": {"type": "Conv1dNeck"}}}')
    assert main(["train", str(pooled), "--heads", str(spec), "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert "head 'brand'" in error
    assert "extract with --keep patch_tokens" in error


def test_validation_features_of_another_backbone_are_refused(
    files: Files, stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    common = ["--quiet", "extract", "--checkpoint", str(files.other_checkpoint)]
    assert main([*common, "--size", "28", "56", "--out", str(other), str(files.folder)]) == 0
    argv = ["train", str(stores["folder"]), "--val", str(other), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "differs from" in capsys.readouterr().err
    assert not (tmp_path / "o" / "heads.pt").exists()


def test_train_output_exports_to_onnx(
    files: Files, stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    trained = tmp_path / "trained"
    spec = write_spec(
        tmp_path / "spec.json",
        '{"heads": {"colour": {"type": "LinearHead"}, "brand": {"type": "Conv1dNeck"}}}',
    )
    argv = ["--quiet", "train", str(stores["attributes"]), "--heads", str(spec)]
    assert main([*argv, "--out", str(trained), "--epochs", "1", "--batch-size", "4"]) == 0
    capsys.readouterr()
    onnx_file = tmp_path / "model.onnx"
    argv = ["export", "--heads", str(trained / "heads.pt"), "--checkpoint", str(files.checkpoint)]
    assert main([*argv, "--out", str(onnx_file)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {onnx_file}")
    # The neck is built for the 2x4 grid of 28x56 images: the size is fixed to it.
    assert "28x56, any batch size" in printed
    assert "output  colour: logits (B, K)" in printed
    assert "output  brand: logits (B, K)" in printed
    assert "largest difference from PyTorch" in printed

    import numpy as np
    import onnxruntime

    from dinov2_heads.checkpoints import load_backbone
    from dinov2_heads.features import FrozenBackbone

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 28, 56)
    (colour, brand) = session.run(["colour", "brand"], {"images": images.numpy()})
    heads = load_heads(trained / "heads.pt").heads
    assert heads is not None
    expected = heads(FrozenBackbone(load_backbone(files.checkpoint))(images))
    np.testing.assert_allclose(colour, expected["colour"].detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(brand, expected["brand"].detach().numpy(), atol=1e-4)


def test_the_export_line_writes_beside_the_heads_file(
    files: Files,
    stores: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # the folder the commands run from, which stays clean
    trained = tmp_path / "trained"
    argv = ["--quiet", "train", str(stores["attributes"]), "--label", "colour", "--epochs", "1"]
    assert main([*argv, "--batch-size", "4", "--out", str(trained)]) == 0
    printed = capsys.readouterr().out.split("try next")[1]
    export = next(line.strip() for line in printed.splitlines() if "dinov2-heads export" in line)
    assert export.endswith(f"--out {trained / 'heads.onnx'}")
    assert main(shlex.split(export.replace("BACKBONE", str(files.checkpoint)))[1:]) == 0
    assert (trained / "heads.onnx").is_file()
    assert not (tmp_path / "heads.onnx").exists()


def test_export_refuses_another_backbone(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "--heads", str(files.heads), "--checkpoint", str(files.other_checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "m.onnx")]) == 1
    assert "trained on backbone weights with fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_four_stored_blocks_give_the_official_52_heads(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads import create_backbone

    torch.manual_seed(0)
    deep = create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    checkpoint = tmp_path / "deep.pth"
    torch.save(deep.state_dict(), checkpoint)
    store, out = tmp_path / "store", tmp_path / "probe"
    common = ["--quiet", "extract", "--checkpoint", str(checkpoint), "--size", "28", "56"]
    assert main([*common, "--n-last-blocks", "4", "--out", str(store), str(files.folder)]) == 0
    argv = ["--quiet", "train", str(store), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "training 52 linear heads on" in printed
    results = json.loads((out / "results.json").read_text())
    assert {row["n_blocks"] for row in results["grid"]} == {1, 4}
    assert len(results["grid"]) == 52
    saved = load_heads(out / "heads.pt")
    assert saved.n_last_blocks == 4
    assert saved.backbone_config is not None
    assert saved.backbone_config["depth"] == 4
    # predict builds the frozen backbone with the blocks the best head reads.
    argv = ["predict", "--heads", str(out / "heads.pt"), "--checkpoint", str(checkpoint)]
    assert main([*argv, str(files.folder / "bus")]) == 0
    assert capsys.readouterr().out.startswith("image")


def test_linear_heads_train_without_reading_the_patch_tokens(
    stores: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The grid and a spec of linear heads read the pooled tokens only; a neck reads the
    # patch tokens. Every read of a store's array is recorded.
    read: list[str] = []
    array = FeatureStore.array

    def recorded(self: FeatureStore, name: str) -> torch.Tensor:
        read.append(name)
        return array(self, name)

    monkeypatch.setattr(FeatureStore, "array", recorded)
    common = ["--quiet", "train", str(stores["attributes"]), "--batch-size", "4", "--epochs", "1"]
    assert main([*common, "--label", "colour", "--out", str(tmp_path / "grid")]) == 0
    assert "class_tokens" in read
    assert "patch_tokens" not in read
    linear = write_spec(tmp_path / "linear.json", '{"heads": {"colour": {"type": "LinearHead"}}}')
    assert main([*common, "--heads", str(linear), "--out", str(tmp_path / "linear")]) == 0
    assert "patch_tokens" not in read
    neck = write_spec(tmp_path / "neck.json", '{"heads": {"brand": {"type": "Conv1dNeck"}}}')
    assert main([*common, "--heads", str(neck), "--out", str(tmp_path / "neck")]) == 0
    assert "patch_tokens" in read


def test_try_next_names_the_checkpoint_the_store_was_extracted_with(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder name with a space: the printed commands quote it, so they run as copied.
    checkpoint = tmp_path / "my models" / "tiny.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(files.checkpoint.read_bytes())
    store = tmp_path / "store"
    extract = ["--quiet", "extract", "--checkpoint", str(checkpoint), "--size", "28", "56"]
    assert main([*extract, "--out", str(store), str(files.folder)]) == 0
    train = ["--quiet", "train", str(store), "--epochs", "1", "--batch-size", "4"]
    assert main([*train, "--out", str(tmp_path / "probe")]) == 0
    printed = capsys.readouterr().out.split("try next")[1]
    assert "BACKBONE" not in printed
    predict = next(line for line in printed.splitlines() if "dinov2-heads predict" in line)
    assert f"--checkpoint '{checkpoint}' IMAGES" in predict
    argv = shlex.split(predict.replace("IMAGES", str(files.folder / "bus")))[1:]
    assert main(argv) == 0
    assert "bus" in capsys.readouterr().out

    # A checkpoint moved away since, or a store whose dataset.json does not record one: the
    # placeholder, explained.
    checkpoint.rename(tmp_path / "moved.pth")
    assert main([*train, "--out", str(tmp_path / "probe")]) == 0
    printed = capsys.readouterr().out.split("try next")[1]
    assert "(BACKBONE: the checkpoint the features were extracted with" in printed
    assert "--checkpoint BACKBONE IMAGES" in printed
    dataset = json.loads((store / "dataset.json").read_text())
    (tmp_path / "moved.pth").rename(checkpoint)
    del dataset["checkpoint"]
    (store / "dataset.json").write_text(json.dumps(dataset))
    assert main([*train, "--out", str(tmp_path / "probe")]) == 0
    assert "--checkpoint BACKBONE IMAGES" in capsys.readouterr().out
