"""``examples/vehicle_parts.py`` on a tiny synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import FeatureStore
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


def test_vehicle_parts_from_a_feature_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["--num-images", "10", "--epochs", "2", "--batch-size", "4", "--cache", str(cache)]
    assert example("vehicle_parts").main([*argv, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "training from FeatureStore(" in printed
    assert "blocks=[(1, True)]" in printed
    assert "mIoU" in printed
    store = FeatureStore.open(cache)
    assert len(store) == 8  # the training images; two are held out
    assert store.layout.arrays["labels"].dtype == "uint8"
    # A second run finds the store complete and trains from it again.
    stamp = (cache / "block_tokens.bin").stat().st_mtime_ns
    assert example("vehicle_parts").main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert (cache / "block_tokens.bin").stat().st_mtime_ns == stamp
    assert "training from FeatureStore(" in capsys.readouterr().out
