from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

norm_benchmark = load_script("norm_kernels")


def test_smoke_run_times_every_operation(capsys: pytest.CaptureFixture[str]) -> None:
    rows = norm_benchmark.main(["--smoke", "--json"])
    assert json.loads(capsys.readouterr().out) == rows
    pytorch = [(r["operation"], r["implementation"]) for r in rows[:3]]
    assert pytorch == [
        ("layer_norm", "pytorch"),
        ("add_scaled", "pytorch"),
        ("add_scaled_layer_norm", "pytorch"),
    ]
    assert all(r["us"] > 0 and r["gb_per_s"] > 0 for r in rows)
    table = norm_benchmark.format_table(rows)
    assert table.count("| tiny |") == len(rows)
    assert "1.00x" in table
