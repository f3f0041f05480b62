"""A watchdog for loops that wait on their data: a warning when no item has come for a while.

A loop over a ``DataLoader`` that stalls (a worker stuck on a read from a network file
system, a deadlock, a dataset that never returns) waits forever, and says nothing.
:class:`StallWatchdog` wraps the loop's items and notes when each one comes; a thread of its
own sleeps until a warning would be due and, when no item has come for ``after`` seconds,
logs one warning that says how long it has been, whether the loop is waiting for its next
item or still working on the last one, and the line the loop's thread is at. Further
warnings come at 2, 4, 8, ... times ``after`` without an item, never more often; when an
item comes after a warning, one INFO line says so.

The loop pays two clock readings and an uncontended lock per item; the thread wakes once
per ``after`` seconds at most while items keep coming, and is stopped (and joined) when the
``with`` block ends, however it ends.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "STALL_WARNING",
    "WATCHDOG_THREAD_NAME",
    "Stall",
    "StallWatchdog",
    "check_stall_warning",
    "format_duration",
]

T = TypeVar("T")

#: Seconds without a new item before the first warning, by default: long enough for a slow
#: first batch (worker start-up, a large model on a CPU), short enough to be noticed.
STALL_WARNING = 300.0

#: The name of the watchdog's thread (one per watched loop, only while it runs).
WATCHDOG_THREAD_NAME = "dinov2_heads-stall-watchdog"

#: Each further warning comes after this many times the wait of the one before.
_GROWTH = 2.0


@dataclass(frozen=True)
class Stall:
    """What a loop that has had no new item for a while is doing, for its warning.

    Attributes:
        waiting: ``True`` while the loop waits for its next item (the loader is the one
            being waited for), ``False`` while it is still working on the last one (the
            backbone is).
        elapsed: Seconds since the last item came (since the loop started, before the first).
        phase: Seconds since the loop started waiting, or working, as it is now.
        items: Items that came so far.
        where: The innermost Python frame of the loop's thread, ``"file:line in function"``,
            or ``None`` where it cannot be read.
        next_warning: The ``elapsed`` at which the next warning comes, if no item does.
    """

    waiting: bool
    elapsed: float
    phase: float
    items: int
    where: str | None
    next_warning: float


def check_stall_warning(value: object) -> float | None:
    """``value`` as seconds for a :class:`StallWatchdog`, or ``None`` (no watchdog).

    Raises:
        ValueError: ``value`` is not a positive, finite number of seconds or ``None``.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"stall_warning must be a number of seconds > 0 (a warning when no batch has "
            f"come for that long), or None for no warning; got {value!r}"
        )
    return float(value)


def format_duration(seconds: float) -> str:
    """``"0.3 s"``, ``"42 s"``, ``"5 min 0 s"``, ``"2 h 5 min"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class StallWatchdog:
    """Warns, from a thread of its own, when a loop has had no new item for ``after`` seconds.

    Use it as a context manager around the loop, and let it wrap the loop's items::

        with StallWatchdog(300.0, describe) as watchdog:
            for batch in watchdog.watch(loader):
                ...

    Args:
        after: Seconds without a new item before the first warning; the next ones come at
            2, 4, 8, ... times as long. ``None``: no watchdog (no thread, items pass as
            they are).
        describe: Makes the warning from a :class:`Stall`: what is waiting, and what to try.
        item: What an item is called in the INFO line when one comes after a warning.
        clock: Seconds, as ``time.monotonic`` gives them (a test passes a fake and calls
            :meth:`check` itself).
        log: The logger the warnings go to.

    Raises:
        ValueError: ``after`` is neither ``None`` nor a positive, finite number.
    """

    def __init__(
        self,
        after: float | None,
        describe: Callable[[Stall], str],
        *,
        item: str = "item",
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self.after = check_stall_warning(after)
        self.describe = describe
        self.item = item
        self.clock = clock
        self.log = log if log is not None else logger
        self.warnings = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._watched: int | None = None
        now = clock()
        self._last = now  # when the last item came (or the loop started)
        self._phase_start = now
        self._waiting = True
        self._items = 0
        self._due = self.after or 0.0  # the elapsed time at which the next warning comes
        self._warned = False

    # ------------------------------------------------------------------ the loop's side

    def __enter__(self) -> StallWatchdog:
        if self.after is None:
            return self
        self._watched = threading.get_ident()
        with self._lock:
            now = self.clock()
            self._last = self._phase_start = now
        self._thread = threading.Thread(target=self._run, name=WATCHDOG_THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and wait for it to end (nothing happens when it is not running)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join()

    def watch(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, one by one, noting when the loop waits for one and when one comes."""
        if self.after is None:
            yield from items
            return
        iterator = iter(items)
        while True:
            self._mark(waiting=True)
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._mark(waiting=False)
            yield item

    def _mark(self, *, waiting: bool) -> None:
        resumed = None
        with self._lock:
            now = self.clock()
            self._phase_start = now
            self._waiting = waiting
            if waiting:
                return
            if self._warned:
                resumed = now - self._last
                self._warned = False
                self._wake.set()  # the thread sleeps until a later warning: it counts anew
            self._last = now
            self._items += 1
            self._due = self.after or 0.0
        if resumed is not None:
            self.log.info(
                "a new %s came after %s without one; going on", self.item, format_duration(resumed)
            )

    # ------------------------------------------------------------------ the thread's side

    def check(self) -> float:
        """Warn if a warning is due; the seconds until the next one would be.

        The thread calls it each time it wakes; a test with a fake clock calls it directly.
        """
        with self._lock:
            now = self.clock()
            elapsed = now - self._last
            if elapsed < self._due:
                return self._due - elapsed
            # A thread that woke late warns once, for the longest wait it has passed.
            while self._due <= elapsed:
                self._due *= _GROWTH
            stall = Stall(
                waiting=self._waiting,
                elapsed=elapsed,
                phase=now - self._phase_start,
                items=self._items,
                where=self._where(),
                next_warning=self._due,
            )
            self._warned = True
            self.warnings += 1
            due = self._due - elapsed
        self.log.warning("%s", self.describe(stall), extra={"stall": stall})
        return due

    def _where(self) -> str | None:
        if self._watched is None:
            return None
        frame = sys._current_frames().get(self._watched)
        if frame is None:
            return None
        code = frame.f_code
        return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"

    def _run(self) -> None:
        while not self._stopping:
            try:
                delay = self.check()
            except Exception:
                # The watchdog must never stop the loop it watches: say so once, and end.
                self.log.exception("the stall watchdog failed and stops watching")
                return
            self._wake.wait(delay)
            self._wake.clear()
