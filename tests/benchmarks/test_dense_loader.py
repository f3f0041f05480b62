from __future__ import annotations

import json
import statistics

import pytest

from tests.benchmarks.conftest import load_script

dense_loader = load_script("dense_loader")


def test_smoke_run_measures_both_handoffs_per_task_and_worker_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = dense_loader.main(["--smoke", "--json"])
    assert json.loads(capsys.readouterr().out) == result
    assert result["config"]["size"] == [28, 42]
    rows = result["rows"]
    assert [(row["task"], row["workers"]) for row in rows] == [
        (task, workers) for task in ("segmentation", "depth") for workers in (0, 1)
    ]
    for row in rows:
        floats, pixels = row["float32"], row["uint8"]
        # Two images (3, 28, 42): float32 against uint8, a quarter of the bytes.
        assert floats["image_bytes_per_batch"] == 2 * 3 * 28 * 42 * 4
        assert pixels["image_bytes_per_batch"] == 2 * 3 * 28 * 42
        assert row["ratio_image_bytes"] == 0.25
        # The labels are the same either way: masks (2, 28, 42) int64, depth (2, 1, 28, 42).
        labels = 2 * 28 * 42 * (8 if row["task"] == "segmentation" else 4)
        assert floats["batch_bytes"] - floats["image_bytes_per_batch"] == labels
        assert pixels["batch_bytes"] - pixels["image_bytes_per_batch"] == labels
        for handoff in (floats, pixels):
            assert len(handoff["rates"]) == 2
            assert handoff["images_per_s"] == pytest.approx(statistics.median(handoff["rates"]))
        ratios = [u / f for u, f in zip(pixels["rates"], floats["rates"], strict=True)]
        assert row["ratio_images_per_s"] == pytest.approx(statistics.median(ratios))
        assert pixels["normalise_ms_per_batch"] > 0
        assert row["same"] is True
    table = dense_loader.format_table(result)
    assert "| segmentation | 1 | 28 / 7 |" in table


def test_a_random_crop_draws_the_same_windows_both_ways() -> None:
    result = dense_loader.main(["--smoke", "--crop", "14", "28", "--workers", "0", "--json"])
    for row in result["rows"]:
        assert row["float32"]["image_bytes_per_batch"] == 2 * 3 * 14 * 28 * 4
        assert row["same"] is True
