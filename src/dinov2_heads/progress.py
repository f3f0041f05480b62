"""Progress with images/s: a tqdm bar that log lines print above, or log lines alone; and where
the time goes, waiting for data or working on it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["BOUND_SHARE", "Progress", "TimeSplit"]

T = TypeVar("T")

#: A loop that waits for its data more than this share of the time is "loader-bound": the
#: backbone idles that long, and faster loading would speed the whole loop up by as much.
BOUND_SHARE = 0.1


class TimeSplit:
    """Where a loop's wall time goes: waiting for its next item, or working on the one it has.

    :meth:`iterate` wraps the loop's items: the time inside ``next()`` is waiting (for the
    loader), the time until the loop asks for the next item is working (the backbone, and
    whatever else the loop body does). Two clock readings per item, nothing else. The first
    item is left out of both: it includes starting worker processes and the first, slow, call.

    Work on a GPU is asynchronous, so the working time is the GPU's only when the loop body
    waits for its result; the feature extraction does, as it copies the features back to the
    CPU before it asks for the next batch.

    Args:
        waiting: What the loop waits for, as shown (``"loader"``).
        working: What does the work, as shown (``"backbone"``).
        clock: Seconds, as ``time.perf_counter`` gives them (a test passes a fake).
    """

    def __init__(
        self,
        waiting: str = "loader",
        working: str = "backbone",
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.waiting_label = waiting
        self.working_label = working
        self.clock = clock
        self.waiting = 0.0
        self.working = 0.0
        self.items = 0

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, one by one, timing the wait for each and the work with it."""
        iterator = iter(items)
        first = True
        while True:
            start = self.clock()
            try:
                item = next(iterator)
            except StopIteration:
                return
            got = self.clock()
            yield item
            if not first:
                self.waiting += got - start
                self.working += self.clock() - got
                self.items += 1
            first = False

    @property
    def waiting_share(self) -> float | None:
        """The share of the timed wall time spent waiting; ``None`` before any item was timed."""
        total = self.waiting + self.working
        return self.waiting / total if self.items and total > 0 else None

    @property
    def verdict(self) -> str | None:
        """``"loader-bound"`` when waiting took more than :data:`BOUND_SHARE` of the time, else
        ``"backbone-bound"`` (with the labels given); ``None`` before any item was timed."""
        share = self.waiting_share
        if share is None:
            return None
        bound = self.waiting_label if share > BOUND_SHARE else self.working_label
        return f"{bound}-bound"

    def describe(self) -> str:
        """``"loader 72%, backbone 28%: loader-bound"``, or ``""`` before any item was timed."""
        share = self.waiting_share
        if share is None:
            return ""
        return (
            f"{self.waiting_label} {share:.0%}, {self.working_label} {1 - share:.0%}: "
            f"{self.verdict}"
        )


class Progress:
    """Counts items (images by default) and reports their rate: a tqdm bar, log lines, or nothing.

    With ``enabled=True`` a tqdm bar is shown (tqdm is a dependency); while it is shown, the
    console log handlers of the root logger write through ``tqdm.write``, so log lines appear
    above the bar instead of inside it. Should tqdm be missing, a log line (INFO) is written
    every ``log_every`` seconds and at the end. ``enabled=False`` is silent.

    Args:
        total: Images expected, or ``None`` when unknown.
        description: What is being counted, e.g. ``"extracting"``.
        enabled: Show progress at all.
        initial: Images already done before this run (a resumed extraction).
        log_every: Seconds between log lines in the fallback.
        unit: What is counted, in the plural (``"images"``; the bar abbreviates it to "img").
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        enabled: bool = True,
        initial: int = 0,
        log_every: float = 10.0,
        unit: str = "images",
    ) -> None:
        self.total = total
        self.unit = unit
        self.description = description
        self.enabled = enabled
        self.count = initial
        self._initial = initial
        self._log_every = log_every
        self._start = time.perf_counter()
        self._last_log = self._start
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()
        #: Where the time goes, once :meth:`timed` wraps the loop.
        self.split: TimeSplit | None = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=description,
                    unit="img" if unit == "images" else unit,
                )
                self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))

    @property
    def rate(self) -> float:
        """Items per second in this run (resumed items not counted)."""
        elapsed = time.perf_counter() - self._start
        return (self.count - self._initial) / elapsed if elapsed > 0 else 0.0

    def timed(
        self,
        items: Iterable[T],
        waiting: str = "loader",
        working: str = "backbone",
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> Iterator[T]:
        """``items``, timed by a :class:`TimeSplit` that the bar and the log lines show.

        The bar's postfix reads, say, ``loader 72%, backbone 28%: loader-bound``.
        """
        self.split = TimeSplit(waiting, working, clock=clock)
        return self.split.iterate(items)

    def update(self, images: int) -> None:
        """Add ``images`` more items."""
        self.count += images
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(images)
            split = self.split.describe() if self.split is not None else ""
            if split:
                self._bar.set_postfix_str(split, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            self._log()

    def close(self) -> None:
        """Finish the bar, or write the final log line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._redirect.close()
            if self.split is not None and self.split.items:
                self._log()  # the split of the whole run, which the closed bar no longer shows
        else:
            self._log()

    def _log(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        split = self.split.describe() if self.split is not None else ""
        logger.info(
            "%s: %d%s %s, %.1f %s/s%s",
            self.description,
            self.count,
            of,
            self.unit,
            self.rate,
            self.unit,
            f"; {split}" if split else "",
            extra={"time_split": self.split},
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
