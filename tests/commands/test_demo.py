"""``dinov2-heads demo`` on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.cli import main
from dinov2_heads.export import load_heads

from .conftest import Files


def test_demo_runs_and_says_where_the_files_went(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "16", "--num-heldout", "4", "--epochs", "1"]
    # The tiny checkpoint keeps this fast; the default random backbone is the same code path.
    code = main([*argv, "--checkpoint", str(files.checkpoint), "--seed", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "backbone: a custom architecture (1 block of width 64, 1 attention head)" in printed
    assert f"from {files.checkpoint}" in printed
    assert "held-out accuracy (4 images" in printed
    for head in ("body", "colour", "orientation", "brand"):
        assert any(line.startswith(head) for line in printed.splitlines())
    assert "RANDOM" not in printed
    assert f"files in {out}" in printed
    assert f"--checkpoint {files.checkpoint}" in printed  # the predict command to try next
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 2
    assert results["epochs"] == 1
    assert results["backbone"]["checkpoint"] == str(files.checkpoint)
    assert load_heads(out / "heads.pt").head_names == ("body", "colour", "orientation", "brand")


def test_quiet_prints_only_results(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--out", str(tmp_path), "--num-train", "8", "--num-heldout", "2"]
    assert main([*argv, "--epochs", "1", "--checkpoint", str(files.checkpoint), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.lstrip().startswith("held-out accuracy")
    assert "extracting" not in captured.err  # no progress bars


def test_demo_default_is_random_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--out", str(tmp_path), "--num-train", "8", "--num-heldout", "2"]
    assert main([*argv, "--epochs", "1", "--variant", "dinov2_vits14_reg"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed
    assert "4 registers" in printed
    assert (tmp_path / "backbone.pth").is_file()
