from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

dense_slide = load_script("dense_slide")


def test_smoke_run_counts_backbone_calls_and_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    result = dense_slide.main(["--smoke", "--flip", "--json"])
    assert json.loads(capsys.readouterr().out) == result
    one, batched = result["results"]
    windows = result["config"]["windows"]
    assert windows == 2 * 4  # 60x100 with crop 42 and stride 28
    assert one["backbone_calls"] == windows  # the mirror rides along with each crop
    assert batched["backbone_calls"] == 1
    assert one["speedup"] == 1.0
    assert batched["images_per_s"] > 0
    assert result["max_abs_difference"] < 1e-5
    assert "backbone calls" in dense_slide.format_table(result)
