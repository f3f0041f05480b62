"""``dinov2-heads pca``: images beside the PCA pictures of their patch tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinov2_heads.cli import main

from .conftest import Files


def test_writes_the_grid(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pictures" / "pca.png"
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--out", str(out), "--size", "28", "56"]
    assert main([*argv, "--columns", "1", "--foreground", "all", *map(str, files.images)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: 3 image(s) at 28x56 (2x4 patches)")
    assert "foreground side 'all', 100% of the patches coloured" in printed

    from PIL import Image

    with Image.open(out) as picture:
        # One (image, picture) pair per row: 3 rows of 28x56 tiles with 4 pixels of padding.
        assert picture.size == (4 + 56 + 4 + 56 + 4, 4 + 3 * (28 + 4))
        # The picture half of the first row is coloured, not the white padding.
        assert picture.getpixel((4 + 56 + 4 + 28, 4 + 14)) != (255, 255, 255)


def test_folder_input_and_default_preset(
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pca", "--checkpoint", str(files.checkpoint), str(files.folder)]) == 0
    assert "8 image(s) at 224x224 (16x16 patches)" in capsys.readouterr().out
    assert (tmp_path / "pca.png").is_file()


def test_bad_threshold_is_one_line(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "p.png")]
    assert main([*argv, "--threshold", "1.5", str(files.images[0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dinov2-heads pca: error: threshold must be in [0, 1)")
