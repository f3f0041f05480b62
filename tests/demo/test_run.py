"""``run_demo``: the whole job on synthetic vehicles, with tiny settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from dinov2_heads.cache import FeatureStore
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import ManifestDataset, get_preset
from dinov2_heads.demo.run import DemoResults, fresh_directory, run_demo
from dinov2_heads.export import load_heads
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

TINY: dict[str, Any] = {
    "num_train": 24,
    "num_heldout": 8,
    "epochs": 2,
    "batch_size": 8,
    "num_samples": 2,
    "random_backbone": {"depth": 1, "embed_dim": 64, "num_heads": 1, "img_size": 56},
    "progress": False,
}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> DemoResults:
    return run_demo(tmp_path_factory.mktemp("demo") / "out", seed=3, **TINY)


def test_results_per_head(first: DemoResults) -> None:
    assert [head.name for head in first.heads] == ["body", "colour", "orientation", "brand"]
    assert [head.kind for head in first.heads] == ["LinearHead"] * 3 + ["Conv1dNeck"]
    for head in first.heads:
        assert head.count == 8  # every held-out label is known
        assert 0 <= head.correct <= head.count
        assert head.accuracy == head.correct / head.count
        assert head.chance == pytest.approx(1 / head.num_classes)
        # A quarter of the training labels is blanked, so some but not all are known.
        assert 0 < head.train_labels < 24
    assert first.random_weights
    assert "randomly initialised" in first.backbone
    assert first.variant is None  # shrunk: not an official architecture
    assert set(first.seconds) == {"features", "training", "evaluation", "files", "total"}
    table = first.table().splitlines()
    assert table[0].split() == ["head", "type", "classes", "accuracy", "chance"]
    assert [line.split()[0] for line in table[1:]] == ["body", "colour", "orientation", "brand"]


def test_files_load(first: DemoResults) -> None:
    files = first.files
    assert set(files) == {"heads", "backbone", "pca", "results", "samples", "features", "data"}
    checkpoint = load_heads(files["heads"])
    assert isinstance(checkpoint.heads, MultiHead)
    assert isinstance(checkpoint.heads["brand"], Conv1dNeck)
    assert isinstance(checkpoint.heads["colour"], LinearHead)
    assert checkpoint.class_names["orientation"] == ("front", "left", "rear", "right")
    assert checkpoint.input_size == (126, 252)
    assert checkpoint.extra["preprocessing"] == "vehicle_crop"
    # The saved random backbone is the one the heads were trained on.
    checkpoint.check_backbone(load_backbone(files["backbone"]))

    results = json.loads(files["results"].read_text())
    assert results["accuracy"] == first.accuracy
    assert results["backbone"]["random_weights"] is True
    assert results["data"] == {
        "image_size": [126, 252],
        "num_train": 24,
        "num_heldout": 8,
        "missing": 0.25,
    }
    samples = sorted(files["samples"].glob("*.png"))
    assert [p.name.split("-")[0] for p in samples] == ["000024", "000025"]

    from PIL import Image

    with Image.open(files["pca"]) as picture:
        # Four held-out images, two (image, picture) pairs per row, 126x252 tiles, 4 pixels
        # of padding, and the caption below.
        assert picture.width == 4 + 2 * (2 * 252 + 4 + 4)
        assert picture.height > 4 + 2 * (126 + 4)
        assert (
            "random weights, so the colours follow the pixels' colours"
            in (picture.info["Description"])
        )

    # The feature stores stay on disk for dinov2-heads train, with every label column.
    for part, count in (("train", 24), ("heldout", 8)):
        store = FeatureStore.open(files["features"] / part)
        assert len(store) == count
        assert store.label_columns == ["body", "colour", "orientation", "brand"]
        assert "patch_tokens" in store.keep
        # Beside each store, what extract of the images and manifest under data/ writes:
        # the images of its rows in order, the class names and the checkpoint.
        manifest = files["data"] / part / "manifest.csv"
        dataset = json.loads((files["features"] / part / "dataset.json").read_text())
        assert (dataset["kind"], dataset["source"]) == ("manifest", [str(manifest)])
        assert dataset["class_names"] == {k: list(v) for k, v in store.class_names.items()}
        assert dataset["checkpoint"] == {
            "given": str(files["backbone"]),
            "path": str(files["backbone"].resolve()),
        }
        listed = ManifestDataset(manifest, get_preset("vehicle_crop"))
        assert dataset["paths"] == [str(path) for path in listed.paths]
        stored = store.labels(slice(None))
        assert isinstance(stored, dict)
        for column, read in zip(listed.label_columns, listed.labels.T, strict=True):
            names = store.class_names[column]
            expected = [names[i] if i >= 0 else None for i in stored[column].tolist()]
            vocabulary = listed.vocabularies[column]
            assert [vocabulary[i] if i >= 0 else None for i in read.tolist()] == expected
    first_heldout = json.loads((files["features"] / "heldout" / "dataset.json").read_text())
    assert Path(first_heldout["paths"][0]).read_bytes() == samples[0].read_bytes()


def test_same_seed_same_numbers_and_weights(first: DemoResults, tmp_path: Path) -> None:
    before = torch.get_rng_state()
    again = run_demo(tmp_path / "again", seed=3, **TINY)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert again.accuracy == first.accuracy
    ours = load_heads(again.files["heads"]).state_dict
    theirs = load_heads(first.files["heads"]).state_dict
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_another_seed_other_weights(first: DemoResults, tmp_path: Path) -> None:
    other = run_demo(tmp_path / "other", seed=4, **TINY)
    ours = load_heads(other.files["heads"]).state_dict
    theirs = load_heads(first.files["heads"]).state_dict
    assert not torch.equal(ours["colour.weight"], theirs["colour.weight"])


def test_with_a_checkpoint(first: DemoResults, tmp_path: Path) -> None:
    settings = {key: value for key, value in TINY.items() if key != "random_backbone"}
    result = run_demo(tmp_path / "real", checkpoint=first.files["backbone"], **settings)
    assert not result.random_weights
    assert "backbone" not in result.files
    assert str(first.files["backbone"]) in result.backbone
    assert not (tmp_path / "real" / "backbone.pth").exists()


def test_rerun_in_the_same_folder_replaces_the_samples(tmp_path: Path) -> None:
    run_demo(tmp_path / "out", seed=0, **TINY)
    run_demo(tmp_path / "out", seed=0, **{**TINY, "num_train": 26})
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "out" / "samples").glob("*.png"))
    assert names == ["000026", "000027"]
    # The images behind the stores are replaced too: 26 training, 8 held out from 000026.
    images = tmp_path / "out" / "data"
    assert len(list((images / "train" / "images").iterdir())) == 26
    assert sorted(p.name for p in (images / "heldout" / "images").iterdir())[0] == "000026.png"


def test_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("num_train", 1), ("epochs", 0), ("missing", 1.0), ("batch_size", True)],
)
def test_bad_settings(setting: str, value: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=setting):
        run_demo(tmp_path, **{**TINY, setting: value})


def test_fresh_directory(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    assert fresh_directory(base) == base
    base.mkdir()
    assert fresh_directory(base) == base  # empty: usable
    (base / "results.json").write_text("{}")
    assert fresh_directory(base) == tmp_path / "demo-2"
    (tmp_path / "demo-2").write_text("a file")
    assert fresh_directory(base) == tmp_path / "demo-3"


def test_a_rerun_with_a_checkpoint_removes_the_random_backbone(
    first: DemoResults, tmp_path: Path
) -> None:
    small = {**TINY, "num_train": 8, "num_heldout": 2, "epochs": 1, "batch_size": 4}
    out = tmp_path / "out"
    own = run_demo(out, **small).files["backbone"]
    del small["random_backbone"]
    # A checkpoint that is the folder's own backbone.pth stays.
    run_demo(out, checkpoint=own, **small)
    load_heads(out / "heads.pt").check_backbone(load_backbone(own))
    # Another one: heads.pt and the earlier backbone.pth would not belong together.
    run_demo(out, checkpoint=first.files["backbone"], **small)
    assert not own.exists()


def test_refuses_a_folder_it_cannot_write_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found before the run, not when the files are written at its end.
    import dinov2_heads.demo.run

    folder = tmp_path / "read-only"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        dinov2_heads.demo.run.os,
        "access",
        lambda path, mode: False if Path(path) == folder else real_access(path, mode),
    )
    extract = pytest.fail  # the backbone must not run
    monkeypatch.setattr(dinov2_heads.demo.run, "extract_features", lambda *a, **k: extract("ran"))
    with pytest.raises(PermissionError, match=f"--out {folder} is not writable"):
        run_demo(folder, **TINY)


def test_the_random_backbone_is_named_after_the_variant_asked_for(tmp_path: Path) -> None:
    small = {**TINY, "num_train": 8, "num_heldout": 2, "epochs": 1, "batch_size": 4}
    result = run_demo(tmp_path, variant="dinov2_vitl14_reg", **small)
    assert "4 registers (a shrunk dinov2_vitl14_reg so it runs fast" in result.backbone


def test_progress_counts_one_epoch_in_the_singular(tmp_path: Path) -> None:
    said: list[str] = []
    run_demo(tmp_path / "out", seed=0, echo=said.append, **{**TINY, "epochs": 1})
    assert any("for 1 epoch on the cached features" in line for line in said), said
