"""The k-NN benchmark runs both modes on a tiny setting and agrees with itself."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script


def test_tiny_run_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    knn = load_script("knn")
    args = ["--train", "600", "--queries", "40", "--dim", "16", "--classes", "5"]
    assert (
        knn.main([*args, "--chunk-size", "128", "--query-batch", "16", "--repeats", "1", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert [row["mode"] for row in summary["rows"]] == ["full", "chunked"]
    assert summary["same_predictions"] is True
    full, chunked = summary["rows"]
    assert abs(full["checksum"] - chunked["checksum"]) < 1e-3
    assert all(row["seconds"] > 0 and row["peak_bytes"] > 0 for row in summary["rows"])


def test_a_mode_that_dies_is_reported_and_the_other_still_counts() -> None:
    knn = load_script("knn")
    args = knn.parse_args(["--train", "600", "--queries", "40"])
    chunked = {"mode": "chunked", "seconds": 0.5, "peak_bytes": 2**20, "argmax": [0, 1]}
    full = {"mode": "full", "error": "killed by SIGKILL (out of memory?)"}
    summary = knn.summarise(args, [full, chunked])
    assert summary["same_predictions"] is None
    assert summary["speed_ratio_chunked_over_full"] is None
    assert summary["rows"][1] == {"mode": "chunked", "seconds": 0.5, "peak_bytes": 2**20}
    table = knn.format_table(summary)
    assert "full      failed: killed by SIGKILL (out of memory?)" in table
    assert "chunked       0.500          80          1" in table
    assert "less peak memory" not in table
