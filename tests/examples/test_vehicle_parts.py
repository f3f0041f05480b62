"""``examples/vehicle_parts.py`` on a tiny synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.demo import PARTS
from dinov2_heads.heads import LinearSegmentationHead
from tests.examples.test_examples import example, table_rows


def test_vehicle_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num-images", "10", "--epochs", "1", "--batch-size", "4"]
    assert example("vehicle_parts").main(argv) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed, "class")
    assert list(rows)[: len(PARTS)] == list(PARTS)
    assert "mIoU" in printed
    head = LinearSegmentationHead(128, len(PARTS))
    head.load_state_dict(torch.load(tmp_path / "parts_head.pt", weights_only=True))
    assert head.class_names == PARTS
    assert (tmp_path / "overlay.png").stat().st_size > 0
    assert len(list((tmp_path / "parts" / "masks").glob("*.png"))) == 10
