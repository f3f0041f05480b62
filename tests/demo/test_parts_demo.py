"""The demo's segmentation part on tiny settings: it learns, reports and writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.cli import main
from dinov2_heads.demo import PARTS
from dinov2_heads.demo.segmentation import run_parts_demo


def test_parts_head_beats_chance_and_writes_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    lines: list[str] = []
    results = run_parts_demo(
        backbone,
        tmp_path,
        num_train=24,
        num_heldout=4,
        epochs=6,
        progress=False,
        echo=lines.append,
    )
    assert results.scores.miou > results.chance_miou
    assert 0 < results.chance_miou < results.majority_miou < 1
    assert len(results.scores.iou) == len(PARTS)
    assert results.scores.pixels == 4 * 126 * 252
    saved = json.loads((tmp_path / "parts_results.json").read_text())
    assert saved["miou"] == pytest.approx(results.scores.miou)
    assert set(saved["iou"]) == set(PARTS)
    assert (tmp_path / "parts_overlay.png").stat().st_size > 0
    assert "mIoU" in results.table()
    assert "chance" in results.table()
    assert lines
    assert "part masks" in lines[0]


def test_demo_command_reports_the_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--out", str(tmp_path), "--num-train", "8", "--num-heldout", "4"]
    assert main([*argv, "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "vehicle parts, held out (1 images): mIoU" in printed
    assert "parts_overlay.png" in printed
    assert main([*argv, "--epochs", "1", "--quiet", "--no-parts"]) == 0
    assert "vehicle parts" not in capsys.readouterr().out
