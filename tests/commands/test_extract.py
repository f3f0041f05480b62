"""``dinov2-heads extract``: folders, manifests and plain files into a feature store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import FeatureStore
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.cli import main
from dinov2_heads.data import BODY_TYPES

from .conftest import Files


def extract(files: Files, out: Path, *inputs: str | Path, extra: tuple[str, ...] = ()) -> int:
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(out)]
    return main([*argv, "--size", "28", "56", *map(str, inputs), *extra])


def test_class_folders(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert extract(files, tmp_path / "store", files.folder, extra=("--n-last-blocks", "1")) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("FeatureStore(")
    assert "label: 4 classes (bus, sedan, suv, truck)" in printed
    store = FeatureStore.open(
        tmp_path / "store", backbone=load_backbone(files.checkpoint), input_size=(28, 56)
    )
    assert len(store) == 8
    assert store.keep == ("class_tokens", "patch_mean")
    assert store.grid == (2, 4)
    dataset = json.loads((tmp_path / "store" / "dataset.json").read_text())
    assert dataset["kind"] == "folder"
    assert dataset["class_names"] == {"label": list(BODY_TYPES)}
    labels = store.labels(slice(None))
    assert isinstance(labels, torch.Tensor)
    for path, label in zip(dataset["paths"], labels.tolist(), strict=True):
        assert Path(path).parent.name == BODY_TYPES[label]

    # A second run finds the store complete and extracts nothing.
    assert extract(files, tmp_path / "store", files.folder) == 0


def test_manifest_with_missing_labels(files: Files, tmp_path: Path) -> None:
    extra = ("--keep", "patch_tokens", "--label-columns", "colour,brand", "--dtype", "float32")
    assert extract(files, tmp_path / "store", files.manifest, extra=extra) == 0
    store = FeatureStore.open(tmp_path / "store")
    assert store.label_columns == ["colour", "brand"]
    assert store.keep == ("class_tokens", "patch_mean", "patch_tokens")
    assert store.dtype == torch.float32
    labels = store.labels(slice(None))
    assert isinstance(labels, dict)
    # The synthetic manifest blanks a quarter of the cells: -100 marks them.
    known = {column: int((value >= 0).sum()) for column, value in labels.items()}
    assert all(0 < count < 8 for count in known.values()), known
    dataset = json.loads((tmp_path / "store" / "dataset.json").read_text())
    assert dataset["kind"] == "manifest"
    assert set(dataset["class_names"]) == {"colour", "brand"}


def test_plain_images_and_a_broken_one(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    inputs = (*files.images, broken)
    assert extract(files, tmp_path / "raise", *inputs) == 1  # on_error=raise by default
    error = capsys.readouterr().err
    assert f"cannot read image {broken}" in error
    assert "or pass --on-error skip to leave" in error  # the option, not the Python argument
    assert extract(files, tmp_path / "skip", *inputs, extra=("--on-error", "skip")) == 0
    store = FeatureStore.open(tmp_path / "skip")
    assert len(store) == len(files.images)
    assert not store.has_labels
    dataset = json.loads((tmp_path / "skip" / "dataset.json").read_text())
    assert dataset["kind"] == "files"
    assert [entry["path"] for entry in dataset["skipped"]] == [str(broken)]


def test_label_columns_need_a_manifest(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = extract(files, tmp_path / "s", *files.images, extra=("--label-columns", "colour"))
    assert code == 1
    assert "--label-columns needs one manifest" in capsys.readouterr().err


def test_label_columns_before_the_manifest_and_repeated(files: Files, tmp_path: Path) -> None:
    # Options may come before the inputs: the column list is one comma-separated word.
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--size", "28", "56"]
    columns = ("--label-columns", "colour", "--label-columns", "brand,orientation")
    assert main([*argv, *columns, "--out", str(tmp_path / "s"), str(files.manifest)]) == 0
    assert FeatureStore.open(tmp_path / "s").label_columns == ["colour", "brand", "orientation"]


def test_space_separated_label_columns_get_a_hint(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "brand" is taken as a second input, so the manifest is no longer alone: the error says
    # how to write several columns.
    code = extract(files, tmp_path / "s", "--label-columns", "colour", "brand", files.manifest)
    assert code == 1
    assert "--label-columns colour,type" in capsys.readouterr().err


def test_empty_label_column_is_a_usage_error(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        extract(files, tmp_path / "s", files.manifest, extra=("--label-columns", "colour,"))
    assert exit_info.value.code == 2
    assert "comma-separated column names" in capsys.readouterr().err
