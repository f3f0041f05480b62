from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

compile_sizes = load_script("compile_sizes")


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_graph_counts_stop_at_two(capsys: pytest.CaptureFixture[str]) -> None:
    calls = ["2x28x42", "3x28x42", "2x42x28", "2x70x56", "3x518x518", "2x28x42"]
    rows = compile_sizes.main(["--depth", "1", "--backend", "eager", "--json", "--calls", *calls])
    assert json.loads(capsys.readouterr().out) == rows
    assert [row["graphs"] for row in rows] == [1, 1, 2, 2, 2, 2]
    assert [(row["batch"], row["height"], row["width"]) for row in rows][2] == (2, 42, 28)
    assert all(row["max_abs_diff"] < 1e-5 and row["seconds"] > 0 for row in rows)


def test_bad_calls_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        compile_sizes.main(["--calls", "4x126"])
    assert "expected BxHxW such as 4x126x252" in capsys.readouterr().err
