"""Progress: a tqdm bar when installed, log lines with images/s otherwise, silence on request."""

from __future__ import annotations

import builtins
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dinov2_heads.cache import extract_features
from dinov2_heads.progress import BOUND_SHARE, Progress, TimeSplit
from tests.cache.conftest import Images, tiny_frozen


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
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="dinov2_heads.progress"),
        Progress(3, "sweep", unit="values of C", log_every=0.0) as sweep,
    ):
        sweep.update(1)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[-1].startswith("sweep: 1/3 values of C, ")
    assert messages[-1].endswith(" values of C/s")


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


class FakeClock:
    """A clock that moves only when told to: the loader and the model below advance it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _batches(clock: FakeClock, count: int, seconds: float, first: float = 0.0) -> Iterator[int]:
    for index in range(count):
        clock.now += first if index == 0 else seconds  # the time spent producing the batch
        yield index


def _run(loader_seconds: float, model_seconds: float, *, first: float = 0.0) -> TimeSplit:
    clock = FakeClock()
    split = TimeSplit(clock=clock)
    for _ in split.iterate(_batches(clock, 5, loader_seconds, first)):
        clock.now += model_seconds  # the backbone's time on the batch
    return split


def test_a_slow_loader_is_named_the_bottleneck() -> None:
    split = _run(loader_seconds=3.0, model_seconds=1.0)
    # The first batch is left out: four timed, 3 s waiting and 1 s working each.
    assert (split.items, split.waiting, split.working) == (4, 12.0, 4.0)
    assert split.waiting_share == pytest.approx(0.75)
    assert split.verdict == "loader-bound"
    assert split.describe() == "loader 75%, backbone 25%: loader-bound"


def test_a_slow_model_is_named_the_bottleneck() -> None:
    split = _run(loader_seconds=0.05, model_seconds=1.0, first=30.0)  # workers start slowly
    assert split.waiting_share == pytest.approx(0.05 / 1.05)
    assert split.verdict == "backbone-bound"
    assert split.describe() == "loader 5%, backbone 95%: backbone-bound"


def test_the_bound_is_a_tenth_of_the_time_waiting() -> None:
    assert BOUND_SHARE == 0.1
    assert _run(loader_seconds=0.09, model_seconds=0.91).verdict == "backbone-bound"
    assert _run(loader_seconds=0.11, model_seconds=0.89).verdict == "loader-bound"


def test_nothing_is_said_before_a_batch_was_timed() -> None:
    split = _run(loader_seconds=1.0, model_seconds=1.0, first=1.0)
    assert split.items == 4
    one = TimeSplit(clock=FakeClock())
    assert list(one.iterate([7])) == [7]
    assert (one.waiting_share, one.verdict, one.describe()) == (None, None, "")


def test_the_bar_and_the_last_log_line_show_the_split(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with (
        caplog.at_level(logging.INFO, logger="dinov2_heads.progress"),
        Progress(5, "extracting") as bar,
    ):
        for _ in bar.timed(_batches(clock, 5, 3.0), clock=clock):
            clock.now += 1.0
            bar.update(1)
    assert "loader 75%, backbone 25%: loader-bound" in capsys.readouterr().err
    (record,) = caplog.records
    assert record.getMessage().startswith("extracting: 5/5 images, ")
    assert record.getMessage().endswith(" images/s; loader 75%, backbone 25%: loader-bound")
    assert record.time_split is bar.split  # type: ignore[attr-defined]


def test_extraction_shows_the_split(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dinov2_heads.progress"):
        extract_features(tiny_frozen(), Images(6), batch_size=2)
    (record,) = [r for r in caplog.records if r.name == "dinov2_heads.progress"]
    split = record.time_split  # type: ignore[attr-defined]
    assert isinstance(split, TimeSplit)
    assert split.items == 2  # three batches, the first left out
    assert split.verdict in ("loader-bound", "backbone-bound")
    assert record.getMessage().endswith(split.describe())
