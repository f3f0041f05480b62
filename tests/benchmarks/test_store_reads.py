"""The store-reads benchmark runs both ways on a tiny store and agrees with itself."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script


def test_tiny_run_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("store_reads")
    tiny = ["--samples", "64", "--dim", "16", "--grid", "4", "--n-blocks", "2"]
    script.main([*tiny, "--batch-size", "16", "--runs", "2", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["mode"] for row in result["rows"]] == ["everything", "needed"]
    assert result["same_weights"] is True
    everything, needed = result["rows"]
    # class tokens (2, 16) + patch mean (16) in float16; everything adds (2, 16, 16) patches.
    assert needed["bytes_per_sample"] == (2 * 16 + 16) * 2
    assert everything["bytes_per_sample"] == needed["bytes_per_sample"] + 2 * 16 * 16 * 2
    assert all(len(row["seconds"]) == 2 and row["median_s"] > 0 for row in result["rows"])
    assert result["ratio_everything_over_needed"] > 0
    table = script.format_table(result)
    assert "everything / needed" in table
    assert "token KiB/sample" in table
