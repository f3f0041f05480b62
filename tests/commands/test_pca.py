"""``dinov2-heads pca``: images beside the PCA pictures of their patch tokens."""

from __future__ import annotations

import subprocess
import sys
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
        # One (image, picture) pair per row: 3 rows of 28x56 tiles with 4 pixels of padding,
        # then the caption.
        assert picture.width == 4 + 56 + 4 + 56 + 4
        assert picture.height > 4 + 3 * (28 + 4)
        # The picture half of the first row is coloured, not the white padding.
        assert picture.getpixel((4 + 56 + 4 + 28, 4 + 14)) != (255, 255, 255)
        # Every patch is coloured ("all"): the caption says so and speaks of no background.
        caption = picture.info["Description"]
        assert caption.startswith("Left: each image. Right: its patch tokens")
        assert "Black" not in caption


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
    assert main(["--quiet", *argv, "--threshold", "1.5", str(files.images[0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dinov2-heads pca: error: threshold must be in [0, 1)")


def test_says_wrote_once(files: Files, tmp_path: Path) -> None:
    # In a process of its own: the console log handler is the real one, not pytest's.
    out = tmp_path / "pca.png"
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--out", str(out), "--size", "28", "56"]
    done = subprocess.run(
        [sys.executable, "-m", "dinov2_heads", *argv, str(files.images[0])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (done.stdout + done.stderr).count(f"wrote {out}") == 1
    assert done.stdout.startswith(f"wrote {out}: 1 image(s)")
