"""``watched_batches``: the batches of a training or an evaluation, read as an extraction reads.

Every loop of :mod:`~dinov2_heads.training` that reads a ``DataLoader`` (``train_one_epoch``,
``fit_grid``, ``evaluate_grid``, ``evaluate_dense``) reads it through :func:`watched_batches`:
a :class:`~dinov2_heads.watchdog.StallWatchdog` warns when no batch has come for a while
(saying whether the loop waits for the data or is still at work on a batch, and what to try),
the loader's workers are stopped however the loop ends, and torch's report of a worker that
died becomes a :class:`~dinov2_heads.cache.WorkerDiedError` or
:class:`~dinov2_heads.cache.SharedMemoryError` that says how it ended and what to change.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from torch.utils.data import DataLoader

from dinov2_heads.cache.errors import ReadingLoop
from dinov2_heads.cache.loader_reading import read_and_stop, reading_failure
from dinov2_heads.cache.loader_settings import loader_batch_size
from dinov2_heads.cache.stalls import stall_message
from dinov2_heads.watchdog import StallWatchdog

__all__ = ["watched_batches"]

T = TypeVar("T")


@contextlib.contextmanager
def watched_batches(
    batches: Iterable[T],
    *,
    loop: ReadingLoop,
    stall_warning: float | None,
    loader: DataLoader[Any] | None = None,
) -> Iterator[Iterator[T]]:
    """The batches of ``batches``, watched, for the ``with`` block of a ``loop``::

        with watched_batches(loader, loop="evaluation", stall_warning=300.0) as watched:
            for batch in watched:
                ...

    Args:
        batches: A ``DataLoader``, or any iterable of batches (a list, a generator that
            wraps a ``DataLoader``).
        loop: What reads them (``"training"``, ``"evaluation"``), as the warnings and errors
            name it.
        stall_warning: Seconds without a new batch before a warning (see
            :class:`~dinov2_heads.watchdog.StallWatchdog`; checked); ``None``: none.
        loader: The ``DataLoader`` that ``batches`` wraps, when ``batches`` is not the loader
            itself: its worker count and batch size go into the warning and the errors (the
            caller stops its workers, e.g. by reading it with
            :func:`~dinov2_heads.cache.loader_reading.read_and_stop`). Without it, batches
            that are not a ``DataLoader`` count as read in this process.

    Raises:
        WorkerDiedError: A worker of the loader was killed, crashed or exited, in the block.
        SharedMemoryError: A worker ran out of shared memory handing a batch over.
        ValueError: ``loader`` is given but ``batches`` is another ``DataLoader``, or
            ``stall_warning`` is not a positive number of seconds or ``None``.
    """
    if isinstance(batches, DataLoader):
        if loader is not None and loader is not batches:
            raise ValueError(
                "loader= names the DataLoader that the batches wrap, but the batches are "
                "another DataLoader; pass that DataLoader alone (without loader=)"
            )
        loader = batches
    workers = loader.num_workers if loader is not None else 0
    watchdog = StallWatchdog(
        stall_warning, functools.partial(stall_message, workers=workers, loop=loop), item="batch"
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(watchdog)
        # read_and_stop stops a DataLoader's workers however the loop ends, and names how a
        # worker that vanished ended.
        items: Iterator[T] = (
            stack.enter_context(contextlib.closing(read_and_stop(batches)))
            if isinstance(batches, DataLoader)
            else iter(batches)
        )
        try:
            yield watchdog.watch(items)
        except (RuntimeError, OSError) as error:
            # torch's SIGCHLD handler raises a dead worker's report wherever this process is
            # (waiting for a batch, or at work on one), so anywhere in the block.
            failure = reading_failure(
                error,
                workers=loader.num_workers if loader is not None else None,
                batch_size=loader_batch_size(loader) if loader is not None else None,
                loop=loop,
            )
            if failure is None:
                raise
            raise failure from error
