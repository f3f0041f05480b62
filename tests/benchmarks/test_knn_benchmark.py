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
