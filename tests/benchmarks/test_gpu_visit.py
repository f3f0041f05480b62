from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.conftest import load_script

gpu_visit = load_script("gpu_visit")


def test_smoke_run_writes_each_part_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = gpu_visit.main(["--smoke", "--out", str(tmp_path), "--only", "dense_slide"])
    assert [row["name"] for row in summary] == ["dense_slide"]
    assert summary[0]["status"] == "ok"
    result = json.loads((tmp_path / "dense_slide.json").read_text())
    assert result["max_abs_difference"] < 1e-5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "| dense_slide | ok |" in capsys.readouterr().out


def test_failures_timeouts_and_the_budget_are_reported(tmp_path: Path) -> None:
    parts = (
        gpu_visit.Part("fails", ("-c", "import sys; sys.exit(3)"), None, share_s=30, json=False),
        gpu_visit.Part("fails_too", (), ("-c", "import sys; sys.exit(3)"), share_s=30, json=False),
        gpu_visit.Part("sleeps", (), ("-c", "import time; time.sleep(60)"), share_s=2),
        gpu_visit.Part("late", (), ("-c", "pass"), share_s=30),
    )
    outcomes = gpu_visit.run(parts, tmp_path, budget_s=3.0, smoke=True, min_part_s=1.5)
    status = {outcome.name: outcome.status for outcome in outcomes}
    assert status["fails"] == "skipped: needs CUDA"
    assert status["fails_too"] == "failed (exit 3)"
    assert status["sleeps"].startswith("timed out after")
    assert status["late"].startswith("skipped:")
    assert status["late"].endswith("s left")
    table = gpu_visit.format_summary(outcomes)
    assert table.count("\n") == len(parts) + 1
