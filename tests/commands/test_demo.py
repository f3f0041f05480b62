"""``dinov2-heads demo`` on tiny settings."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from dinov2_heads.cli import main
from dinov2_heads.data import load_mask
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


def test_the_segment_and_depth_lines_run_as_printed(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my demo"  # a space: the printed commands quote the paths
    argv = ["demo", "--out", str(out), "--num-train", "8", "--num-heldout", "8", "--epochs", "1"]
    assert main([*argv, "--checkpoint", str(files.checkpoint), "--quiet"]) == 0
    printed = capsys.readouterr().out
    listed = printed.split("files in")[1].split("try next")[0]
    for name in ("parts_head.pt", "parts_samples/", "depth_head.pt", "depth_samples/"):
        assert f"  {name} " in listed
    commands = [line.strip() for line in printed.split("try next:")[1].splitlines()]
    segment = next(line for line in commands if line.startswith("dinov2-heads segment"))
    depth = next(line for line in commands if line.startswith("dinov2-heads depth"))
    # The size the heads were trained at: the samples' own, and any image's.
    assert "--size 126 252" in segment
    assert "--size 126 252" in depth

    assert main(shlex.split(segment)[1:]) == 0
    labelled = capsys.readouterr().out.splitlines()
    assert len(labelled) == 2
    assert all(f"{out / 'parts_samples'}" in line for line in labelled)
    for name in ("000004", "000005"):  # the held-out images after 4 training ones
        assert load_mask(out / "segmentation" / f"{name}.png").shape == (126, 252)
        assert (out / "segmentation" / f"{name}_overlay.png").is_file()

    assert main(shlex.split(depth)[1:]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["image", "min"]
    assert len(table) == 1 + 2
    assert sorted(path.name for path in (out / "depth").iterdir()) == [
        "000004.png",
        "000005.png",
    ]
