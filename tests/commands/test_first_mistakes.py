"""A newcomer's first mistakes on the command line: each is one line that says what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dinov2_heads.cli import main

from .conftest import Files

#: The address the official hub code fetches ViT-S/14 from; the library only names it.
OFFICIAL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if f"dinov2-heads {command}: error: " in line]
    assert len(lines) == 1, err
    return lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--out", "{tmp}/demo"],
        ["predict", "--heads", "{heads}", "{image}"],
        ["extract", "--out", "{tmp}/store", "{image}"],
        ["pca", "--out", "{tmp}/pca.png", "{image}"],
        ["export", "--heads", "{heads}", "--out", "{tmp}/h.onnx"],
        ["depth", "--heads", "{heads}", "--out", "{tmp}/depth", "{image}"],
        ["segment", "--heads", "{heads}", "--out", "{tmp}/parts", "{image}"],
        ["search", "{tmp}/store", "{image}"],
        ["inspect"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_official_checkpoint_not_downloaded_yet_says_where_to_get_it(
    argv: list[str], files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Typed as the docs show it, in a folder where the file is not (nothing is downloaded).
    checkpoint = str(tmp_path / "dinov2_vits14_pretrain.pth")
    values = {"tmp": tmp_path, "heads": files.heads, "image": files.images[0]}
    args = [arg.format(**values) for arg in argv]
    args += [checkpoint] if argv == ["inspect"] else ["--checkpoint", checkpoint]
    assert main(args) == 1
    message = one_error_line(capsys, argv[0])
    assert message.startswith(f"no checkpoint file at {checkpoint}; dinov2-heads downloads nothing")
    assert OFFICIAL in message
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("command", ["predict", "extract", "pca"])
def test_a_heads_file_given_as_the_checkpoint_says_which_option_takes_it(
    command: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {
        "predict": ["--heads", str(files.heads)],
        "extract": ["--out", str(tmp_path / "store")],
        "pca": ["--out", str(tmp_path / "pca.png")],
    }[command]
    assert main([command, *args, "--checkpoint", str(files.heads), str(files.images[0])]) == 1
    # The loader's own message, word for word as load_backbone gives it in Python.
    assert one_error_line(capsys, command) == (
        f"{files.heads} is a heads file written by save_heads (heads: colour, brand), not a "
        "backbone checkpoint: pass the DINOv2 backbone checkpoint the heads were trained on "
        "instead, and load this file with dinov2_heads.load_heads (on the command line: "
        f"--heads {files.heads}, with the backbone as --checkpoint)"
    )


def test_a_backbone_or_a_folder_given_as_the_heads(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(files.images[0])
    assert (
        main(
            [
                "predict",
                "--heads",
                str(files.checkpoint),
                "--checkpoint",
                str(files.checkpoint),
                image,
            ]
        )
        == 1
    )
    assert "not a head checkpoint written by save_heads" in one_error_line(capsys, "predict")
    folder = files.heads.parent
    assert (
        main(["predict", "--heads", str(folder), "--checkpoint", str(files.checkpoint), image]) == 1
    )
    message = one_error_line(capsys, "predict")
    assert message.startswith(f"{folder} is a directory, not a file: pass the path of one file")
    assert "heads.pt" in message
    assert "read_checkpoint" not in message


def test_a_folder_of_feature_stores_is_not_a_store(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo's features/ folder holds train/ and heldout/: train takes one of them.
    store = tmp_path / "features" / "train"
    extract = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(store)]
    assert main([*extract, "--size", "28", "56", str(files.folder)]) == 0
    assert main(["train", str(store.parent), "--out", str(tmp_path / "trained")]) == 1
    message = one_error_line(capsys, "train")
    assert message == (
        f"no feature store at {store.parent}: it is a folder of stores (train); pass one of "
        f"them, e.g. {store}"
    )
    # The advice works: the named store trains.
    assert main(["--quiet", "train", str(store), "--out", str(tmp_path / "trained")]) == 0


def test_a_folder_without_images(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("no images here", encoding="utf-8")
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "p.png")]
    assert main([*argv, str(tmp_path)]) == 1
    assert one_error_line(capsys, "pca").startswith(f"no images found in {tmp_path}; give image")


def test_a_size_not_a_multiple_of_14_is_rounded_and_said(
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "p.png"
    argv = ["pca", "--checkpoint", str(files.checkpoint), "--size", "27", "57", "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="dinov2_heads"):
        assert main([*argv, str(files.images[0])]) == 0
    said = "image size 27x57 is not a multiple of 14; using 28x56 (H x W) instead"
    assert said in caplog.messages
    assert capsys.readouterr().out.startswith(f"wrote {out}: 1 image(s) at 28x56")
