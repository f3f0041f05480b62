"""``dinov2-heads predict``: saved heads + backbone checkpoint + images -> labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.cli import main
from dinov2_heads.demo import BRANDS, COLOURS

from .conftest import Files


def predict(files: Files, *extra: str, checkpoint: Path | None = None) -> int:
    argv = [
        "predict",
        "--heads",
        str(files.heads),
        "--checkpoint",
        str(checkpoint or files.checkpoint),
    ]
    return main([*argv, *extra, *map(str, files.images)])


def test_table(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(files) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "colour", "brand"]
    assert len(lines) == 1 + len(files.images)
    for line, path in zip(lines[1:], files.images, strict=True):
        path_text, colour, colour_p, brand, brand_p = line.split()
        assert path_text == str(path)
        assert colour in COLOURS
        assert brand in list(BRANDS)[:3]
        assert 0 < float(colour_p) <= 1
        assert 0 < float(brand_p) <= 1


def test_json_top_k(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(files, "--json", "--top-k", "5", "--batch-size", "2") == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["predictions"]
    assert [row["path"] for row in rows] == [str(p) for p in files.images]
    for row in rows:
        colours, brands = row["heads"]["colour"], row["heads"]["brand"]
        assert len(colours) == 5
        assert len(brands) == 3  # top-k is capped at the number of classes
        probabilities = [entry["probability"] for entry in colours]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(entry["probability"] for entry in brands) == pytest.approx(1, abs=1e-3)
        assert all(entry["label"] == list(COLOURS)[entry["index"]] for entry in colours)
    assert data["skipped"] == []


def test_other_backbone_is_refused(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(files, checkpoint=files.other_checkpoint) == 1
    err = capsys.readouterr().err
    assert "trained on backbone weights with fingerprint" in err
    assert len(err.strip().splitlines()) == 1
    assert predict(files, "--no-backbone-check", checkpoint=files.other_checkpoint) == 0


def test_unreadable_images_skipped(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    argv = ["predict", "--heads", str(files.heads), "--checkpoint", str(files.checkpoint)]
    assert main([*argv, "--json", "--on-error", "skip", str(broken), str(files.images[0])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in data["predictions"]] == [str(files.images[0])]
    assert [entry["path"] for entry in data["skipped"]] == [str(broken)]
    assert main([*argv, str(broken)]) == 1
    assert "cannot read image" in capsys.readouterr().err
