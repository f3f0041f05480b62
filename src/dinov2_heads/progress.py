"""Progress with images/s: a tqdm bar that log lines print above, or log lines alone."""

from __future__ import annotations

import contextlib
import logging
import time
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Progress"]


class Progress:
    """Counts images and reports images/s: a tqdm bar, periodic log lines, or nothing.

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
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        enabled: bool = True,
        initial: int = 0,
        log_every: float = 10.0,
    ) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled
        self.count = initial
        self._initial = initial
        self._log_every = log_every
        self._start = time.perf_counter()
        self._last_log = self._start
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()
        if enabled:
            try:
                from tqdm.auto import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=total, initial=initial, desc=description, unit="img")
                self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))

    @property
    def rate(self) -> float:
        """Images per second in this run (resumed images not counted)."""
        elapsed = time.perf_counter() - self._start
        return (self.count - self._initial) / elapsed if elapsed > 0 else 0.0

    def update(self, images: int) -> None:
        """Add ``images`` more images."""
        self.count += images
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(images)
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
        else:
            self._log()

    def _log(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        logger.info("%s: %d%s images, %.1f images/s", self.description, self.count, of, self.rate)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
