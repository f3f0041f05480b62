"""The stall watchdog: when it warns (a fake clock, no thread), and its thread (real, briefly)."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator

import pytest

from dinov2_heads.watchdog import (
    WATCHDOG_THREAD_NAME,
    Stall,
    StallWatchdog,
    check_stall_warning,
    format_duration,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WATCHDOG_THREAD_NAME]


def describe(stall: Stall) -> str:
    who = "loader" if stall.waiting else "backbone"
    return f"{who} {stall.elapsed:g} {stall.phase:g} {stall.items} {stall.next_warning:g}"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "dinov2_heads.watchdog"
    ]


def test_warnings_come_at_growing_intervals_and_start_again_with_each_item(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    watchdog = StallWatchdog(10.0, describe, item="batch", clock=clock)
    items = watchdog.watch(iter(range(3)))
    with caplog.at_level(logging.INFO, logger="dinov2_heads.watchdog"):
        # The loop waits for its first item: checks every second for a minute.
        seen = []
        for _ in range(60):
            clock.now += 1.0
            seen.append(watchdog.check())
        assert warnings_of(caplog) == [
            "loader 10 10 0 20",
            "loader 20 20 0 40",
            "loader 40 40 0 80",
        ]
        assert seen[9] == 10.0  # warned at 10 s: the next one is 10 s away
        assert seen[59] == 20.0  # 60 s waited: the next at 80 s
        # The first item comes after 60 s, and the loop works on it for 15 s.
        assert next(items) == 0
        clock.now += 15.0
        assert watchdog.check() == pytest.approx(5.0)
        assert warnings_of(caplog)[-1] == "backbone 15 15 1 20"
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert infos == ["a new batch came after 1 min 0 s without one; going on"]
        # Items that keep coming in time: no warning at all.
        assert next(items) == 1
        caplog.clear()
        clock.now += 9.0
        assert watchdog.check() == pytest.approx(1.0)
        assert next(items) == 2
        clock.now += 9.0
        assert watchdog.check() == pytest.approx(1.0)
        assert not caplog.records
        # A check that comes late warns once, for the longest wait passed, not once for each.
        clock.now += 86.0
        watchdog.check()
        assert warnings_of(caplog) == ["backbone 95 95 3 160"]
    assert watchdog.warnings == 5


def test_the_phase_and_the_wait_are_told_apart() -> None:
    clock = FakeClock()
    stalls: list[Stall] = []

    def keep(stall: Stall) -> str:
        stalls.append(stall)
        return "stalled"

    watchdog = StallWatchdog(5.0, keep, clock=clock)
    items = watchdog.watch(iter("ab"))
    assert next(items) == "a"
    clock.now += 3.0  # working on "a" for 3 s
    watchdog.check()
    assert stalls == []
    assert next(items) == "b"
    clock.now += 4.0  # 4 s working on "b"
    assert next(items, None) is None  # the loop asks for the next item: there is none
    clock.now += 2.0  # waiting 2 s, 6 s after "b" came
    watchdog.check()
    [stall] = stalls
    assert stall.waiting
    assert stall.items == 2
    assert stall.elapsed == pytest.approx(6.0)
    assert stall.phase == pytest.approx(2.0)


def test_no_watchdog_with_none() -> None:
    watchdog = StallWatchdog(None, describe)
    with watchdog:
        assert list(watchdog.watch(range(3))) == [0, 1, 2]
        assert not watchdog_threads()


def test_bad_thresholds_are_refused() -> None:
    assert check_stall_warning(None) is None
    assert check_stall_warning(2) == 2.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "300"):
        with pytest.raises(ValueError, match=r"stall_warning must be a number of seconds > 0"):
            check_stall_warning(bad)
    with pytest.raises(ValueError, match="got 0"):
        StallWatchdog(0, describe)


def test_durations_read_well() -> None:
    assert format_duration(0.04) == "0.0 s"
    assert format_duration(0.25) == "0.2 s"
    assert format_duration(42.4) == "42 s"
    assert format_duration(300.0) == "5 min 0 s"
    assert format_duration(7505.0) == "2 h 5 min"


# ---------------------------------------------------------------------- the thread, for real


def slow_once(delay: float) -> Iterator[int]:
    yield 0
    time.sleep(delay)  # the loader stalls before the second item
    yield 1
    yield 2


def test_the_thread_warns_while_the_loader_stalls_and_ends_with_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[Stall] = []

    def keep(stall: Stall) -> str:
        stalls.append(stall)
        return "stalled"

    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dinov2_heads.watchdog"):
        with StallWatchdog(0.05, keep, item="batch") as watchdog:
            assert len(watchdog_threads()) == 1
            assert list(watchdog.watch(slow_once(0.5))) == [0, 1, 2]
        assert not watchdog_threads()  # stopped and joined when the block ends
    took = time.monotonic() - start
    assert stalls
    assert all(stall.waiting and stall.items == 1 for stall in stalls)
    # One warning per doubling of the wait at most (0.05, 0.1, 0.2, 0.4, ... seconds).
    due = [stall.next_warning for stall in stalls]
    assert all(later >= 2 * earlier for earlier, later in itertools.pairwise(due))
    assert all(stall.elapsed >= stall.next_warning / 2 for stall in stalls)
    assert len(stalls) <= math.floor(math.log2(took / 0.05)) + 1
    assert stalls[0].where is not None
    assert "slow_once" in stalls[0].where
    assert any("a new batch came after" in r.getMessage() for r in caplog.records)


def test_the_thread_names_the_line_the_work_is_at_and_ends_on_an_error() -> None:
    stalls: list[Stall] = []

    def keep(stall: Stall) -> str:
        stalls.append(stall)
        return "stalled"

    def loop() -> None:
        with StallWatchdog(0.05, keep) as watchdog:
            for _ in watchdog.watch(range(3)):
                time.sleep(0.3)  # the work on an item stalls
                raise KeyError("the loop fails")

    with pytest.raises(KeyError):
        loop()
    assert not watchdog_threads()
    assert stalls
    assert not stalls[0].waiting
    where = stalls[0].where or ""
    assert where.startswith(__file__)
    assert "in loop" in where
