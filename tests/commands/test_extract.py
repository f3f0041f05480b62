"""``dinov2-heads extract``: folders, manifests and plain files into a feature store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dinov2_heads.cache import FeatureStore
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.cli import main
from dinov2_heads.demo import BODY_TYPES

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


def test_label_options_with_a_class_folder_are_refused(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Class folders label by folder name; a manifest option would be ignored silently.
    for option in (("--label-columns", "colour"), ("--image-column", "file")):
        assert extract(files, tmp_path / "s", files.folder, extra=option) == 1
        assert f"{option[0]} needs one manifest" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_images_beside_class_folders_are_refused(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The images at the top would be left out of a store labelled by the sub-folders.
    mixed = tmp_path / "mixed"
    (mixed / "bus").mkdir(parents=True)
    for index, image in enumerate(files.images):
        (mixed / ("bus" if index == 0 else ".") / image.name).write_bytes(image.read_bytes())
    assert extract(files, tmp_path / "s", mixed) == 1
    error = capsys.readouterr().err
    assert f"{mixed} holds 2 image(s) beside its class sub-folders (bus)" in error
    assert not (tmp_path / "s").exists()


def test_a_finished_store_of_other_images_is_refused(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same backbone, size and sample count: only dataset.json tells the two apart.
    store = tmp_path / "store"
    assert extract(files, store, files.folder) == 0
    before = (store / "dataset.json").read_bytes()
    capsys.readouterr()
    assert extract(files, store, files.manifest, extra=("--label-columns", "body")) == 1
    error = capsys.readouterr().err
    assert "holds the features of other images or labels" in error
    assert "--overwrite" in error
    assert (store / "dataset.json").read_bytes() == before
    assert extract(files, store, files.manifest, extra=("--overwrite",)) == 0
    assert json.loads((store / "dataset.json").read_text())["kind"] == "manifest"


def test_an_interrupted_run_records_its_images(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unreadable image in the last class stops the run after the first batches are stored.
    folder = tmp_path / "folder"
    for image in sorted(files.folder.rglob("*.png")):
        target = folder / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    broken = sorted(folder.rglob("*.png"))[-1]
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    store = tmp_path / "store"
    assert extract(files, store, folder, extra=("--batch-size", "2")) == 1
    assert f"cannot read image {broken}" in capsys.readouterr().err
    written = json.loads((store / "dataset.json").read_text())
    assert written["paths"] == [str(path) for path in sorted(folder.rglob("*.png"))]

    # Resuming on other images is refused; resuming on the repaired ones finishes the store.
    assert extract(files, store, files.manifest, extra=("--label-columns", "body")) == 1
    assert "holds the features of other images or labels" in capsys.readouterr().err
    broken.write_bytes(good)
    assert extract(files, store, folder, extra=("--batch-size", "2")) == 0
    assert len(FeatureStore.open(store)) == 8


def _jpeg_folder(files: Files, folder: Path) -> Path:
    """The class folder as JPEG files four times the input size: draft decoding reduces them."""
    for image in sorted(files.folder.rglob("*.png")):
        target = folder / image.parent.name / f"{image.stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image) as opened:
            opened.resize((224, 112), Image.Resampling.BICUBIC).save(target, quality=95)
    return folder


def test_jpeg_files_are_draft_decoded_unless_no_draft(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _jpeg_folder(files, tmp_path / "jpegs")
    assert extract(files, tmp_path / "draft", folder) == 0
    assert (
        extract(files, tmp_path / "full", folder, extra=("--no-draft", "--num-workers", "0")) == 0
    )
    drafted, full = FeatureStore.open(tmp_path / "draft"), FeatureStore.open(tmp_path / "full")
    assert drafted.manifest.preprocessing["draft"] is True
    assert "draft" not in full.manifest.preprocessing
    # Decoded at a quarter of each side, then resized: close to full decoding, not equal.
    difference = (drafted.array("class_tokens") - full.array("class_tokens")).abs()
    assert 0 < float(difference.max()) < 0.5 * float(full.array("class_tokens").abs().max())
    capsys.readouterr()
    assert extract(files, tmp_path / "full", folder, extra=("--draft",)) == 1
    error = capsys.readouterr().err
    assert (
        "was started without draft decoding of JPEG files, and --draft asks for the other" in error
    )
    assert "leave out --draft to resume it" in error
    assert extract(files, tmp_path / "draft", folder, extra=("--no-draft",)) == 1
    assert "was started with draft decoding" in capsys.readouterr().err


def test_a_store_started_without_draft_resumes_without_it(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _jpeg_folder(files, tmp_path / "jpegs")
    broken = sorted(folder.rglob("*.jpg"))[-1]
    good = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")
    store = tmp_path / "store"
    # As a store made before draft decoding existed: its preprocessing records no draft.
    assert extract(files, store, folder, extra=("--batch-size", "2", "--no-draft")) == 1
    assert "draft" not in json.loads((store / "manifest.json").read_text())["preprocessing"]
    broken.write_bytes(good)
    assert extract(files, store, folder, extra=("--batch-size", "2")) == 0
    resumed = FeatureStore.open(store)
    assert "draft" not in resumed.manifest.preprocessing
    fresh = tmp_path / "fresh"
    assert extract(files, fresh, folder, extra=("--batch-size", "2", "--no-draft")) == 0
    assert torch.equal(
        resumed.array("class_tokens"), FeatureStore.open(fresh).array("class_tokens")
    )


def test_num_workers_is_a_count_or_auto(files: Files, tmp_path: Path) -> None:
    assert extract(files, tmp_path / "auto", files.folder, extra=("--num-workers", "auto")) == 0
    with pytest.raises(SystemExit) as exit_info:
        extract(files, tmp_path / "bad", files.folder, extra=("--num-workers", "many"))
    assert exit_info.value.code == 2


def test_weights_dtype_is_recorded_and_followed_when_resuming(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    flags = ("--weights-dtype", "bfloat16", "--num-workers", "0")
    assert extract(files, out, files.folder, extra=flags) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["weights_dtype"] == "bfloat16"
    bf16 = load_backbone(files.checkpoint).to(torch.bfloat16)
    store = FeatureStore.open(out, backbone=bf16, input_size=(28, 56))
    assert len(store) == 8

    # Without the flag a finished store is found as it was made; asking for float32 is refused.
    assert extract(files, out, files.folder) == 0
    capsys.readouterr()
    assert extract(files, out, files.folder, extra=("--weights-dtype", "float32")) != 0
    error = capsys.readouterr().err
    assert "started with backbone weights dtype bfloat16, but this run has float32" in error


def test_the_checkpoint_is_recorded_and_an_older_dataset_file_resumes(
    files: Files, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    assert extract(files, store, files.folder) == 0
    dataset = json.loads((store / "dataset.json").read_text())
    assert dataset["checkpoint"] == {
        "given": str(files.checkpoint),
        "path": str(files.checkpoint.resolve()),
    }

    # A dataset.json written before the checkpoint was recorded: the run is checked against
    # its images as before, and completes it with the checkpoint.
    del dataset["checkpoint"]
    (store / "dataset.json").write_text(json.dumps(dataset))
    assert extract(files, store, files.folder) == 0
    assert json.loads((store / "dataset.json").read_text())["checkpoint"]["given"] == str(
        files.checkpoint
    )
