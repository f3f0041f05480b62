"""examples/train_depth.py on its synthetic default: it trains, reports, draws and saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import FeatureStore
from dinov2_heads.export import load_heads
from dinov2_heads.heads import LinearDepthHead
from tests.examples.test_examples import example


def metric_rows(printed: str) -> dict[str, list[float]]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, *values = line.split()
        rows[name] = [float(v) for v in values]
    return rows


def test_train_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = example("train_depth").main(["--out", str(tmp_path), "--num-images", "16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "12 training and 4 validation pairs" in printed
    rows = metric_rows(printed)
    assert set(rows) == {
        "abs_rel",
        "sq_rel",
        "rmse",
        "rmse_log",
        "log10",
        "delta1",
        "delta2",
        "delta3",
    }
    # Columns: the head and the constant baseline as they are, then both median-scaled (the
    # constant then puts each image's own median everywhere). A few steps on a tiny random
    # backbone learn no more than that median, so only the table's sense is checked here.
    head, constant, scaled, constant_scaled = rows["abs_rel"]
    assert min(head, constant, scaled, constant_scaled) > 0
    assert scaled < head  # the overall scale is what the head has not learned yet
    for name in ("delta1", "delta2", "delta3"):
        assert all(0.0 <= value <= 1.0 for value in rows[name])
    assert all(a <= b <= c for a, b, c in zip(*(rows[f"delta{i}"] for i in (1, 2, 3)), strict=True))
    for name in ("prediction.png", "ground_truth.png", "depth_head.pt"):
        assert (tmp_path / name).is_file()
    saved = load_heads(tmp_path / "depth_head.pt")
    assert saved.extra["metrics"]["abs_rel"] == pytest.approx(head, abs=1e-3)
    restored = saved.load_into(LinearDepthHead(128, max_depth=20.0))
    assert torch.isfinite(restored.conv_depth.weight).all()


def test_train_depth_from_a_feature_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["--out", str(tmp_path), "--num-images", "12", "--epochs", "2", "--cache", str(cache)]
    assert example("train_depth").main([*argv, "--head", "linear4"]) == 0
    printed = capsys.readouterr().out
    assert "training from FeatureStore(" in printed
    assert "blocks=[(0, False), (1, False), (2, False), (3, False)]" in printed
    assert set(metric_rows(printed)) >= {"abs_rel", "delta1"}
    store = FeatureStore.open(cache)
    assert len(store) == 9  # the training pairs; three are held out
    spec = store.layout.arrays["labels"]
    assert (spec.dtype, spec.shape) == ("float16", (1, 56, 112))
    with pytest.raises(SystemExit):
        example("train_depth").main([*argv, "--crop", "42", "84"])
