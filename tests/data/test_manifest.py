from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_heads.data import (
    MISSING_LABEL,
    ManifestDataset,
    Preprocess,
    read_manifest,
)

from .conftest import write_image, write_truncated

SMALL = Preprocess(resize=(14, 14))
ROWS = [
    ("img/0.png", "suv", "red", "front"),
    ("img/1.png", "sedan", "", "rear"),
    ("img/2.png", "", "blue", ""),
    ("img/3.png", "suv", "blue", "left"),
]


def write_csv(root: Path, name: str = "labels.csv", bom: bool = False) -> Path:
    for i in range(len(ROWS)):
        write_image(root / "img" / f"{i}.png", seed=i)
    lines = ["path,type,colour,orientation", *(",".join(row) for row in ROWS)]
    text = "\n".join(lines) + "\n"
    path = root / name
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def test_csv_labels_with_missing_cells(tmp_path: Path) -> None:
    dataset = ManifestDataset(write_csv(tmp_path), SMALL)
    assert dataset.label_columns == ("type", "colour", "orientation")
    assert dataset.vocabularies == {
        "type": ("sedan", "suv"),
        "colour": ("blue", "red"),
        "orientation": ("front", "left", "rear"),
    }
    assert dataset.num_classes == {"type": 2, "colour": 2, "orientation": 3}
    assert dataset.labels.tolist() == [
        [1, 1, 0],
        [0, MISSING_LABEL, 2],
        [MISSING_LABEL, 0, MISSING_LABEL],
        [1, 0, 1],
    ]
    image, labels = dataset[1]
    assert image.shape == (3, 14, 14)
    assert labels == {"type": 0, "colour": MISSING_LABEL, "orientation": 2}


def test_one_label_column_by_name(tmp_path: Path) -> None:
    dataset = ManifestDataset(write_csv(tmp_path), SMALL, label_columns="colour")
    assert dataset.label_columns == ("colour",)
    assert dataset[1][1] == {"colour": MISSING_LABEL}


def test_collated_batches_are_per_column_tensors(tmp_path: Path) -> None:
    dataset = ManifestDataset(write_csv(tmp_path), SMALL)
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 14, 14)
    assert set(labels) == {"type", "colour", "orientation"}
    assert labels["colour"].dtype == torch.int64
    assert labels["colour"].tolist() == [1, MISSING_LABEL, 0, 0]
    # -100 is cross_entropy's ignore_index: missing labels add nothing to the loss.
    logits = torch.randn(4, 2)
    full = torch.nn.functional.cross_entropy(logits, labels["colour"])
    known = labels["colour"] != MISSING_LABEL
    assert torch.allclose(
        full, torch.nn.functional.cross_entropy(logits[known], labels["colour"][known])
    )


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_manifests(tmp_path: Path, suffix: str) -> None:
    write_csv(tmp_path)
    records = [
        {"file": "img/0.png", "type": "suv", "score": 3},
        {"file": "img/1.png", "type": None, "score": 1},
        {"file": "img/2.png", "score": 3},
    ]
    path = tmp_path / f"labels{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    dataset = ManifestDataset(path, SMALL, image_column="file")
    assert dataset.label_columns == ("type", "score")
    assert dataset.vocabularies == {"type": ("suv",), "score": ("1", "3")}
    assert dataset.labels.tolist() == [[0, 1], [MISSING_LABEL, 0], [MISSING_LABEL, 1]]


def test_given_vocabularies_fix_the_indices(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    vocabularies = {"type": ["truck", "suv", "sedan"]}
    dataset = ManifestDataset(path, SMALL, label_columns=["type"], vocabularies=vocabularies)
    assert dataset.vocabularies == {"type": ("truck", "suv", "sedan")}
    assert dataset.labels[:, 0].tolist() == [1, 2, MISSING_LABEL, 1]
    with pytest.raises(ValueError, match=r"row 1: type='suv' is not one of the given class names"):
        ManifestDataset(path, SMALL, vocabularies={"type": ["sedan"]})
    with pytest.raises(ValueError, match="not label columns"):
        ManifestDataset(path, SMALL, label_columns=["type"], vocabularies={"colour": ["red"]})


def test_byte_order_mark_and_root(tmp_path: Path) -> None:
    path = write_csv(tmp_path, bom=True)
    moved = tmp_path / "elsewhere" / "labels.csv"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    dataset = ManifestDataset(moved, SMALL, root=tmp_path)
    assert dataset.paths[0] == tmp_path / "img" / "0.png"
    assert dataset.label_columns[0] == "type"
    assert dataset[0][0].shape == (3, 14, 14)


def test_unreadable_images_skipped_with_a_record(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    write_truncated(tmp_path / "img" / "1.png")
    dataset = ManifestDataset(path, SMALL, on_error="skip")
    assert len(dataset) == 3
    assert [r.path for r in dataset.skipped] == [tmp_path / "img" / "1.png"]
    assert dataset.labels[:, 0].tolist() == [1, MISSING_LABEL, 1]


def test_manifest_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    with pytest.raises(ValueError, match=r"no image column 'image'.*image_column="):
        ManifestDataset(path, SMALL, image_column="image")
    with pytest.raises(ValueError, match="not in manifest"):
        ManifestDataset(path, SMALL, label_columns=["brand"])
    (tmp_path / "bad.json").write_text('{"path": "a.png"}')
    with pytest.raises(ValueError, match="JSON list of objects"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "bad.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unknown manifest format"):
        read_manifest(tmp_path / "bad.xml")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "nopath.csv").write_text("path,type\n,suv\n")
    with pytest.raises(ValueError, match="row 1: the image column 'path' is empty"):
        ManifestDataset(tmp_path / "nopath.csv", SMALL)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.csv")


def test_csv_rows_that_do_not_fit_the_header_are_errors(tmp_path: Path) -> None:
    # An unquoted delimiter inside a cell shifts every later cell one column to the right.
    wide = tmp_path / "wide.csv"
    wide.write_text("path,brand,colour\na.png,suv,red\nb.png,Mercedes, Benz,silver\n")
    with pytest.raises(ValueError, match=r"wide\.csv, line 3: 4 cells but the header has 3"):
        read_manifest(wide)
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("path,brand\na.png,suv,\nb.png,,\n")
    assert read_manifest(trailing) == [
        {"path": "a.png", "brand": "suv"},
        {"path": "b.png", "brand": None},
    ]
    tabs = tmp_path / "wide.tsv"
    tabs.write_text("path\tbrand\na.png\tsuv\textra\n")
    with pytest.raises(ValueError, match=r"wide\.tsv, line 2: 3 cells but the header has 2"):
        read_manifest(tabs)
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("path,type,colour,type\na.png,suv,red,sedan\n")
    with pytest.raises(ValueError, match=r"repeated\.csv repeats the column name\(s\) \['type'\]"):
        read_manifest(repeated)


def test_malformed_manifests_name_the_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"path": "a.png"},\n  {"path": "b.png",}\n]\n')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON: .* line 3"):
        read_manifest(broken)
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"path": "a.png"}\n{"path": "b.png"\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: not valid JSON"):
        read_manifest(lines)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,type\nstraße.png,suv\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text.*save it as UTF-8"):
        read_manifest(latin)
