"""``dinov2-heads predict``: saved heads + backbone checkpoint + images -> labels."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from dinov2_heads.cli import main
from dinov2_heads.demo import BRANDS, COLOURS

from .conftest import DenseFiles, Files


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


# ---------------------------------------------------------------------------- dense heads


def advice(message: str) -> list[str]:
    """The dinov2-heads command lines a message ends with ("run A and B"), as argv lists."""
    commands = message.split("; run ", 1)[1].strip().split(" and dinov2-heads ")
    return [shlex.split(commands[0])] + [shlex.split(f"dinov2-heads {c}") for c in commands[1:]]


def test_a_segmentation_file_is_refused_with_the_segment_command_to_run(
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads_file = Path(shutil.copy(dense_files.segmentation, tmp_path / "parts.pt"))
    argv = ["predict", "--heads", str(heads_file)]
    argv += ["--checkpoint", str(files.checkpoint), *map(str, files.images)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "holds a segmentation head (a class per pixel)" in err
    assert "expected logits" not in err
    (command,) = advice(err)
    images = list(map(str, files.images))
    assert command == [
        "dinov2-heads", "segment", "--heads", str(heads_file),
        "--checkpoint", str(files.checkpoint), "--size", "28", "56",
        "--out", str(tmp_path / "segmentation"), *images,
    ]  # fmt: skip
    # The advice runs as printed, from any folder: the pictures go beside the heads file.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(command[1:]) == 0
    assert not (tmp_path / "elsewhere" / "segmentation").exists()
    pictures = tmp_path / "segmentation"
    assert sorted(p.name for p in pictures.iterdir()) == sorted(
        name for path in files.images for name in (f"{path.stem}.png", f"{path.stem}_overlay.png")
    )


def test_a_depth_file_is_refused_with_the_depth_command_to_run(
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads_file = shutil.copy(dense_files.depth, tmp_path / "depth.pt")
    argv = ["predict", "--heads", str(heads_file), "--checkpoint", str(files.checkpoint)]
    argv += ["--size", "42", "84", "--device", "cpu", str(files.images[0])]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "holds a depth head (depth per pixel)" in err
    (command,) = advice(err)
    # The user's own options carry over: --size and --device.
    assert command[:2] == ["dinov2-heads", "depth"]
    assert command[command.index("--size") + 1 : command.index("--size") + 3] == ["42", "84"]
    assert command[command.index("--device") + 1] == "cpu"
    monkeypatch.chdir(tmp_path)
    assert main(command[1:]) == 0
    assert (tmp_path / "depth" / f"{files.images[0].stem}.png").is_file()


def test_a_file_of_dense_heads_only_names_a_command_per_head(
    files: Files, dense_files: DenseFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", "--heads", str(dense_files.dense_only)]
    assert main([*argv, "--checkpoint", str(files.checkpoint), str(files.images[0])]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "segmentation head 'parts' (a class per pixel) and depth head 'depth'" in err
    segment, depth = advice(err)
    assert segment[1:5] == ["segment", "--heads", str(dense_files.dense_only), "--head-name"]
    assert segment[5] == "parts"
    assert depth[1:5] == ["depth", "--heads", str(dense_files.dense_only), "--head-name"]
    assert depth[5] == "depth"


def test_a_mixed_file_predicts_its_classifiers_and_names_the_dense_heads_left_out(
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dinov2_heads.checkpoints import load_backbone
    from dinov2_heads.data import Preprocess, load_batch
    from dinov2_heads.export import load_heads
    from dinov2_heads.features import FrozenBackbone

    heads_file = shutil.copy(dense_files.mixed, tmp_path / "mixed.pt")
    argv = ["predict", "--heads", str(heads_file), "--checkpoint", str(files.checkpoint)]
    images = list(map(str, files.images))
    assert main([*argv, *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "colour"]
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert len(warnings) == 2
    assert warnings[0].startswith("left out segmentation head 'parts' (a class per pixel)")
    assert warnings[1].startswith("left out depth head 'depth' (depth per pixel)")

    caplog.clear()
    assert main([*argv, "--json", "--top-k", "2", *images]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [entry["head"] for entry in data["left_out"]] == ["parts", "depth"]
    assert [entry["task"] for entry in data["left_out"]] == ["segmentation", "depth"]
    # The colour head's probabilities are those of the heads file on these images.
    heads = load_heads(dense_files.mixed).heads
    assert heads is not None
    batch = load_batch(files.images, Preprocess(resize=(28, 56)))
    with torch.no_grad():
        logits = heads["colour"](FrozenBackbone(load_backbone(files.checkpoint))(batch.images))
    best = logits.softmax(dim=-1).max(dim=-1)
    for row, index, score in zip(data["predictions"], best.indices, best.values, strict=True):
        assert list(row["heads"]) == ["colour"]
        assert row["heads"]["colour"][0]["index"] == int(index)
        assert row["heads"]["colour"][0]["probability"] == pytest.approx(float(score), abs=1e-4)
    # Each left-out head's command runs it.
    monkeypatch.chdir(tmp_path)
    for entry in data["left_out"]:
        command = shlex.split(entry["command"])
        assert command[command.index("--head-name") + 1] == entry["head"]
        assert main(command[1:]) == 0
        pictures = tmp_path / entry["head"]
        assert (pictures / f"{files.images[0].stem}.png").is_file()
