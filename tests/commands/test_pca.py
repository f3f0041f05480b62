"""``dinov2-heads pca``: images beside the PCA pictures of their patch tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.cli import main
from dinov2_heads.commands import pca
from dinov2_heads.commands.pca import last_patch_tokens

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


def _bare_patch_tokens(
    backbone: torch.nn.Module, images: torch.Tensor, *, batch_size: int, show_progress: bool
) -> torch.Tensor:
    # What the command computed before it went through FrozenBackbone: the bare backbone.
    with torch.no_grad():
        chunks = [
            backbone.forward_features(images[i : i + batch_size])["x_norm_patchtokens"]
            for i in range(0, images.shape[0], batch_size)
        ]
    return torch.cat(chunks).float()


def test_patch_tokens_are_the_bare_backbones_bit_for_bit(files: Files) -> None:
    backbone = load_backbone(files.checkpoint)
    images = torch.randn(5, 3, 28, 56, generator=torch.Generator().manual_seed(0))
    got = last_patch_tokens(backbone, images, batch_size=2, show_progress=False)
    want = _bare_patch_tokens(backbone, images, batch_size=2, show_progress=False)
    assert got.shape == (5, 8, 64)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_the_picture_is_the_one_the_bare_backbone_gives(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    argv = ["--quiet", "pca", "--checkpoint", str(files.checkpoint), "--size", "28", "56"]
    argv += ["--batch-size", "2", *map(str, files.images)]
    assert main([*argv, "--out", str(tmp_path / "now.png")]) == 0
    monkeypatch.setattr(pca, "last_patch_tokens", _bare_patch_tokens)
    assert main([*argv, "--out", str(tmp_path / "bare.png")]) == 0
    with Image.open(tmp_path / "now.png") as now, Image.open(tmp_path / "bare.png") as bare:
        assert now.size == bare.size
        assert now.tobytes() == bare.tobytes()
        assert now.info["Description"] == bare.info["Description"]


def test_an_existing_out_file_is_replaced_as_export_replaces_its_own(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pca.png"
    out.write_bytes(b"an older picture")
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--size", "28", "56", "--out", str(out)]
    assert main([*argv, str(files.images[0])]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 1 image(s)")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [path.name for path in tmp_path.iterdir()] == ["pca.png"]  # no temporary file left


@pytest.mark.parametrize("command", ["pca", "export", "search"])
def test_an_out_that_cannot_be_one_file_is_refused_before_any_work(
    command: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A checkpoint that does not exist: the --out check comes first, so it is never read.
    missing = str(tmp_path / "missing.pth")
    first = {
        "pca": ["pca", str(files.images[0])],
        "export": ["export", "--heads", str(files.heads)],
        "search": ["search", str(tmp_path / "store"), str(files.images[0])],
    }[command]
    folder = tmp_path / "pictures"
    folder.mkdir()
    assert main([*first, "--checkpoint", missing, "--out", str(folder)]) == 1
    example = {"pca": "pca.png", "export": "heads.onnx", "search": "search.png"}[command]
    assert capsys.readouterr().err == (
        f"dinov2-heads {command}: error: --out {folder} is a folder; pass a file name inside "
        f"it, e.g. {folder / example}\n"
    )
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    assert main([*first, "--checkpoint", missing, "--out", str(blocker / "x" / "p.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"lies inside {blocker}, which is a file" in err
    assert list(folder.iterdir()) == []
