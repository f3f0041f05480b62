from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "heads.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_heads", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_prints_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    script.main(["--depth", "2", "--size", "28x42", "--batch-size", "2", "--iters", "1",
                 "--warmup", "0", "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in result["results"]]
    assert names == [
        "backbone forward",
        "LinearHead (n_blocks=1)",
        "LinearHead (n_blocks=2)",
        "Conv1dNeck (2x3)",
        "MultiHead (3 Conv1dNecks)",
    ]
    assert all(row["median_ms"] > 0 for row in result["results"])
    assert result["config"]["grid"] == [2, 3]
    table = script.format_table(result)
    assert "x backbone" in table
    assert "MultiHead (3 Conv1dNecks)" in table
