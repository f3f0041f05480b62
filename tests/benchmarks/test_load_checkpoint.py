from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

load_checkpoint = load_script("load_checkpoint")


@pytest.mark.slow
def test_tiny_run_prints_json_for_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    load_checkpoint.main(["--variant", "dinov2_vits14", "--depth", "1", "--repeats", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in result["rows"]] == list(load_checkpoint.METHODS)
    for row in result["rows"]:
        assert row["load_s"] > 0
        assert row["peak_mb"] >= 0
    assert result["file_mb"] > 0
