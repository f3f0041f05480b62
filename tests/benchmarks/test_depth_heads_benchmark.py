from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

TINY = ["--depth", "4", "--size", "28x42", "--batch-size", "1", "--iters", "1", "--warmup", "0"]


def test_depth_benchmark_prints_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("depth_heads")
    script.main([*TINY, "--channels", "8", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in result["results"]] == ["linear", "linear4", "dpt"]
    assert [row["blocks"] for row in result["results"]] == [[3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert all(row["images_per_s"] > 0 for row in result["results"])
    assert all(row["head_ms"] > 0 for row in result["results"])
    assert result["config"]["mode"] == "whole"
    table = script.format_table(result)
    assert "images/s" in table
    assert "linear4" in table


def test_slide_and_flip_settings_are_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("depth_heads")
    script.main([*TINY, "--heads", "linear", "--crop", "28", "--stride", "14", "--flip", "--json"])
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["mode"], config["crop"], config["flip"]) == ("slide", [28, 28], True)
