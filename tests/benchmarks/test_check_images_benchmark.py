"""The unreadable-image check benchmark runs every way on a few small photos."""

from __future__ import annotations

import json
import logging

import pytest

from tests.benchmarks.conftest import load_script


def test_tiny_run_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("check_images")
    args = ["--photos", "3", "--size", "320x240", "--distinct", "2", "--broken", "2"]
    script.main([*args, "--runs", "1", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["mode"] for row in result["rows"]] == ["full decode", "check_images", "dataset"]
    assert result["same_files_skipped"] is True
    assert result["skipped"] == ["broken-0.jpg", "broken-1.jpg"]
    assert all(row["median_s"] > 0 for row in result["rows"])
    assert "same files skipped: True" in script.format_table(result)


def test_the_library_logs_as_before_after_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("check_images")
    library = logging.getLogger("dinov2_heads")
    before = library.level
    script.main(["--photos", "1", "--size", "64x48", "--broken", "1", "--runs", "1", "--json"])
    capsys.readouterr()
    assert library.level == before
