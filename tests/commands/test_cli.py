"""The command line's contract: help with examples, exit codes 0 / 1 / 2, ``--debug``."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dinov2_heads
from dinov2_heads.cli import COMMANDS, build_parser, main

from .conftest import Files


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: dinov2-heads {command}" in out
    assert "example:" in out
    assert f"dinov2-heads {command} " in out.split("example:")[1]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "extract", "train", "predict", "export", "pca", "inspect"):
        assert command in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["predict", "image.png"],  # --heads and --checkpoint are required
        ["extract", "--checkpoint", "c.pth", "images/"],  # --out is required
        ["extract", "--checkpoint", "c.pth", "--out", "f", "--keep", "everything", "x/"],
        ["pca", "--checkpoint", "c.pth", "--size", "224", "x.png"],  # --size needs H and W
        ["pca", "--checkpoint", "c.pth", "--preset", "vehicle_crop", "--size", "1", "2", "x"],
        ["demo", "--epochs", "many"],
        ["demo", "--variant", "dinov2_vitx14"],
        ["predict", "--heads", "h.pt", "--checkpoint", "c.pth", "--top-k", "0", "x.png"],
        ["demo", "--num-train", "1"],
        ["demo", "--num-heldout", "0"],
        ["demo", "--epochs", "0"],
        ["demo", "--seed", "99999999999999999999"],
        ["extract", "--checkpoint", "c.pth", "--out", "f", "--num-workers", "-1", "x/"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--heads", "{missing}/heads.pt", "--checkpoint", "{missing}/b.pth", "x.png"],
        ["pca", "--checkpoint", "{missing}/b.pth", "{missing}/x.png"],
        ["extract", "--checkpoint", "{missing}/b.pth", "--out", "{missing}/f", "{missing}/x"],
        ["inspect", "{missing}/b.pth"],
        ["demo", "--checkpoint", "{missing}/b.pth", "--out", "{missing}/demo"],
    ],
    ids=lambda argv: argv[0],
)
def test_missing_file_is_one_line_exit_1(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    code = main([arg.format(missing=missing) for arg in argv])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dinov2-heads {argv[0]}: error: ")
    assert "nowhere" in lines[0]
    assert "Traceback" not in err


def test_debug_raises_the_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["--debug", "pca", "--checkpoint", str(tmp_path / "b.pth"), str(tmp_path / "nowhere")])


def test_python_m_and_exit_code_in_a_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dinov2_heads", "inspect", str(tmp_path / "nowhere.pth")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("dinov2-heads inspect: error: ")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["", *sorted(COMMANDS)])
def test_help_shows_only_real_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # An option without a value (None) or a flag (False) has its default in its own words.
    with pytest.raises(SystemExit):
        main([command, "--help"] if command else ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out
    assert "(default: False)" not in out
    assert "see below" not in out  # no promise of a text that is not there
    if command == "extract":
        assert "(default: official_eval)" in out
        assert "(default: 64)" in out  # --batch-size
    if command == "predict":
        assert "(default: as the heads were trained" in out


def test_errors_name_the_options_not_python_arguments(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out"]
    store = str(tmp_path / "store")
    assert main([*argv, store, "--size", "28", "56", str(files.folder)]) == 0
    capsys.readouterr()
    # The store was made at 28x56: resuming it at 56x56 is refused.
    assert main([*argv, store, "--size", "56", "56", str(files.folder)]) == 1
    error = capsys.readouterr().err
    assert "or pass --overwrite (or a new path)" in error
    assert "overwrite=True" not in error

    other = str(tmp_path / "other")
    assert main([*argv, other, "--variant", "dinov2_vitb14", str(files.folder)]) == 1
    error = capsys.readouterr().err
    assert "the weights do not fit dinov2_vitb14" in error
    assert "leaving --variant out builds the architecture of the weights" in error
    assert "load_backbone" not in error

    assert main([*argv, other, "--image-column", "file", str(files.manifest)]) == 1
    error = capsys.readouterr().err
    assert "pass --image-column to name the one with the paths" in error


def test_a_number_out_of_range_names_its_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--num-train", "1"])
    assert exit_info.value.code == 2
    assert "argument --num-train: must be at least 2, got 1" in capsys.readouterr().err


def test_a_device_this_machine_lacks_says_so(
    files: Files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    image = str(files.images[0])
    code = main(["pca", "--checkpoint", str(files.checkpoint), "--device", "cuda", image])
    assert code == 1
    assert "--device cuda asks for CUDA, which this machine lacks; use cpu" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_says_what_it_does(command: str) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = subparsers.choices[command]
    silent = [
        action.option_strings or [action.dest]
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not silent, f"{command}: options without help: {silent}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dinov2-heads {dinov2_heads.__version__} (torch {torch.__version__}")


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        ("extract", "interrupted; run the same command again to resume where it stopped"),
        ("train", "interrupted; nothing was saved; run the same command again"),
        ("inspect", "interrupted"),
    ],
)
def test_ctrl_c_says_what_running_again_does(
    command: str, advice: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(COMMANDS[command]), "run", interrupted)
    argv = {
        "extract": ["extract", "--checkpoint", "c.pth", "--out", "f", "x/"],
        "train": ["train", "store", "--out", "o"],
        "inspect": ["inspect", "c.pth"],
    }[command]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().startswith(advice)


def test_ctrl_c_during_a_real_extraction_leaves_a_store_that_resumes(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dinov2_heads.cache import FeatureStore
    from dinov2_heads.progress import Progress

    real = Progress.update
    batches = {"done": 0}

    def stop_after_two_batches(self: Progress, images: int) -> None:
        real(self, images)
        batches["done"] += 1
        if batches["done"] == 2:
            raise KeyboardInterrupt

    store = tmp_path / "store"
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(store)]
    argv += ["--size", "28", "56", "--batch-size", "2", str(files.folder)]
    monkeypatch.setattr(Progress, "update", stop_after_two_batches)
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert 0 < len(FeatureStore.open(store, allow_incomplete=True)) < 8
    monkeypatch.setattr(Progress, "update", real)
    assert main(argv) == 0  # the same command, as the message says
    assert "8 samples" in capsys.readouterr().out
