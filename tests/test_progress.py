"""Progress: a tqdm bar when installed, log lines with images/s otherwise, silence on request."""

from __future__ import annotations

import builtins
import logging
import subprocess
import sys
from typing import Any

import pytest

from dinov2_heads.progress import Progress


def test_without_tqdm_it_logs_images_per_second(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_tqdm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("tqdm"):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with (
        caplog.at_level(logging.INFO, logger="dinov2_heads.progress"),
        Progress(100, "extracting", initial=40, log_every=0.0) as bar,
    ):
        bar.update(30)
        bar.update(30)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("extracting: 70/100 images, ")
    assert messages[-1].startswith("extracting: 100/100 images, ")
    assert all(m.endswith(" images/s") for m in messages)
    assert bar.count == 100


def test_tqdm_bar_and_silence(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with Progress(8, "epoch 1/1") as bar:
        bar.update(8)
    assert "8/8" in capsys.readouterr().err
    with caplog.at_level(logging.INFO), Progress(8, "quiet", enabled=False) as silent:
        silent.update(8)
    assert capsys.readouterr().err == ""
    assert not caplog.records
    assert silent.rate > 0


LOG_DURING_A_BAR = """
import logging
from dinov2_heads.progress import Progress

logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
bar = Progress(4, "counting")
bar.update(2)
logging.getLogger("dinov2_heads.test").info("halfway")
bar.update(2)
bar.close()
logging.getLogger("dinov2_heads.test").info("after")
"""


def test_log_lines_print_above_the_bar_not_inside_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOG_DURING_A_BAR], capture_output=True, text=True, check=True
    )
    # What a terminal shows of each line: the text after its last carriage return. Without the
    # redirect, "LOG halfway" would follow the half-drawn bar on the same line.
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in done.stderr.split("\n")]
    assert "LOG halfway" in shown
    assert "LOG after" in shown
    assert any(line.startswith("counting: 100%") for line in shown)
    # The handler is restored once the bar is closed.
    assert shown.index("LOG after") > shown.index("LOG halfway")
