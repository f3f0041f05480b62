"""benchmarks/head_training.py runs end to end on a tiny setting (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "head_training.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("head_training_benchmark", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--depth", "4", "--size", "28", "--images", "12", "--batch-size", "8", "--epochs", "2"]


def test_tiny_run_prints_json_and_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    benchmark = load()
    threads = torch.get_num_threads()
    try:
        # One thread: the tiny ops are dominated by thread hand-offs on a busy machine.
        benchmark.main([*TINY, "--warmup", "0", "--iters", "2", "--threads", "1", "--json"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["heads_in_grid"] == 52
    assert result["config"]["size"] == [28, 28]
    assert set(result["seconds"]) == {
        "live_epoch",
        "extraction",
        "cached_epoch",
        "backbone_forward",
        "linear_head_step",
        "grid_step",
        "separate_52_step",
    }
    assert all(value > 0 for value in result["seconds"].values())
    assert set(result["targets_met"]) == set(benchmark.TARGETS)
    table = benchmark.format_table(result)
    assert "52 separate steps / grid step" in table
    assert "step: 52 nn.Linear in a Python loop" in table
