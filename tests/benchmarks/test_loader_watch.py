"""The loader-watch benchmark times the watchdog and the first-sample worker on a tiny setting."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script


def test_tiny_run_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("loader_watch")
    script.main(["--items", "50", "--size", "14", "--runs", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["what"] for row in result["rows"]] == [
        "loop, bare",
        "loop, watched",
        "sample 0 in this process",
        "sample 0 in a worker",
    ]
    assert all(row["median_s"] > 0 for row in result["rows"])
    rows = {row["what"]: row["median_s"] for row in result["rows"]}
    assert result["watchdog_us_per_item"] == pytest.approx(
        (rows["loop, watched"] - rows["loop, bare"]) / 50 * 1e6
    )
    assert "us per batch" in script.format_table(result)
