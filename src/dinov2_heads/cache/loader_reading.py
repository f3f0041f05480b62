"""Reading a ``DataLoader`` so that its workers are always stopped, and their deaths named.

:func:`read_and_stop` yields a ``DataLoader``'s batches and stops its worker processes
however the reading ends; a worker that died without torch saying how is asked, and the
error names its signal or exit code. :func:`reading_failure` turns torch's report of a worker
that ran out of shared memory into a :class:`~dinov2_heads.cache.errors.SharedMemoryError`
that says what to do, and of a worker killed from outside (the out-of-memory killer's
``SIGKILL``) or crashed into a :class:`~dinov2_heads.cache.errors.WorkerDiedError`, for any
loop that reads a ``DataLoader`` (an extraction, a training, an evaluation). How a worker
died is read by :mod:`~dinov2_heads.cache.worker_death`; the shared memory there is, by
:mod:`~dinov2_heads.cache.shared_memory`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from torch.utils.data import DataLoader

from dinov2_heads.cache.errors import ReadingLoop, SharedMemoryError, WorkerDiedError
from dinov2_heads.cache.shared_memory import (
    is_shared_memory_error,
    shared_memory_error,
    shared_memory_space,
)
from dinov2_heads.cache.worker_death import dead_worker, worker_death_of, worker_died_error

__all__ = ["read_and_stop", "reading_failure"]


def read_and_stop(loader: DataLoader[Any]) -> Generator[Any, None, None]:
    """The batches of ``loader``; its worker processes are stopped when this ends, however.

    torch stops them when its iterator is collected, but the traceback of an error raised
    while reading keeps the iterator alive; and while a dead worker stays registered with it,
    torch's ``SIGCHLD`` handler raises "DataLoader worker ... is killed by signal" again at
    the next child process that exits, anywhere in the program. A worker that died without
    torch saying how (a lost connection, a plain "exited unexpectedly") is asked, and the
    error raised names its signal or exit code (see
    :func:`~dinov2_heads.cache.worker_death.worker_death_of`).
    """
    iterator = iter(loader)
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (RuntimeError, OSError, EOFError) as error:
                died = worker_death_of(getattr(iterator, "_workers", ()), error)
                if died is None:
                    raise
                raise died from error
            yield batch
    finally:
        stop = getattr(iterator, "_shutdown_workers", None)
        if callable(stop):
            stop()


def reading_failure(
    error: BaseException,
    *,
    workers: int | None,
    batch_size: int | None,
    loop: ReadingLoop = "extraction",
) -> SharedMemoryError | WorkerDiedError | None:
    """The error to raise from ``error`` (chained) when it is torch's report of a worker that
    ran out of shared memory (:class:`~dinov2_heads.cache.errors.SharedMemoryError`) or died
    otherwise (:class:`~dinov2_heads.cache.errors.WorkerDiedError`); else ``None``.

    For a ``loop`` that reads with ``workers`` worker processes and batches of ``batch_size``
    (``None``: unknown), such as a training over a ``DataLoader``; an extraction asks
    :func:`~dinov2_heads.cache.source.loader_failure`.
    """
    if isinstance(error, SharedMemoryError | WorkerDiedError):
        return None
    shared_memory = is_shared_memory_error(error)
    death = None if shared_memory else dead_worker(error)
    if not shared_memory and death is None:
        return None
    if death is not None:
        return worker_died_error(death, workers=workers, batch_size=batch_size, loop=loop)
    return shared_memory_error(
        error, workers=workers, batch_size=batch_size, space=shared_memory_space(), loop=loop
    )
