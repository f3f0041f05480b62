"""The command line's contract: help with examples, exit codes 0 / 1 / 2, ``--debug``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dinov2_heads.cli import COMMANDS, main


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
    for command in ("demo", "extract", "pca", "predict", "inspect"):
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
