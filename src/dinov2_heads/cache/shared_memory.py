"""Shared memory for ``DataLoader`` workers: what their batches need, and what there is.

A ``DataLoader`` worker hands each batch to the main process through POSIX shared memory,
which on Linux lives in the ``tmpfs`` at ``/dev/shm``. Every batch a worker has prepared and
the main process has not yet released holds its bytes there: ``prefetch_factor`` batches per
worker, plus the batch the backbone is working on. Docker gives a container 64 MiB of
``/dev/shm`` unless told otherwise (``docker run --shm-size=2g``, or ``--ipc=host``), less
than one batch of 64 float32 images of 224x224 (37 MiB) twice over. When a batch does not fit,
torch's worker dies of a bus error or fails with "No space left on device" deep in a stack
trace.

This module measures both sides; :mod:`~dinov2_heads.cache.loader_settings` decides with them
before the workers start, and :mod:`~dinov2_heads.cache.loader_reading` turns torch's errors
into a :class:`SharedMemoryError` that says what to do. Where there is no ``/dev/shm`` (macOS,
Windows), nothing is checked.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dinov2_heads.cache.errors import AFTER_FAILURE, ReadingLoop, SharedMemoryError
from dinov2_heads.cache.layout import format_bytes

__all__ = [
    "SHARED_MEMORY_PATH",
    "SHARED_MEMORY_SHARE",
    "SharedMemorySpace",
    "in_flight_batches",
    "is_shared_memory_error",
    "sample_bytes",
    "shared_memory_error",
    "shared_memory_space",
    "suggested_shm_size",
    "workers_that_fit",
]

#: Where Linux keeps POSIX shared memory (``shm_open``), through which workers hand batches.
SHARED_MEMORY_PATH = "/dev/shm"

#: The share of the free shared memory the batches in flight may take: the rest is left to
#: the allocator's rounding, the pinned-memory thread's hand-over and other processes.
SHARED_MEMORY_SHARE = 0.75

#: What torch says when shared memory runs out, wherever it notices. A worker killed by
#: ``SIGBUS`` (``torch/csrc/DataLoader.cpp`` adds "It is possible that dataloader's workers are
#: out of shared memory" to that one;
#: :func:`~dinov2_heads.cache.worker_death.worker_death_of` says "killed by signal: Bus
#: error" too, where torch said something vaguer); ``MapAllocator``
#: failing to allocate, resize or write a ``/torch_*`` shared-memory file ("unable to allocate
#: shared memory(shm) for file </torch_...>: No space left on device (28)", "unable to write to
#: file </torch_...>: ...").
_SIGNATURES = (
    re.compile(r"killed by signal: Bus error"),
    re.compile(r"out of shared memory"),
    re.compile(r"unable to allocate shared memory"),
    re.compile(r"</torch_[^>]*>[^\n]*No space left on device"),
)


@dataclass(frozen=True)
class SharedMemorySpace:
    """The shared-memory file system's size and free space.

    Attributes:
        path: Where it is mounted (``/dev/shm``).
        size: Its size in bytes.
        free: Bytes free now.
    """

    path: str
    size: int
    free: int


def shared_memory_space(
    path: str | os.PathLike[str] | None = None,
    *,
    statvfs: Callable[[str], Any] | None = None,
) -> SharedMemorySpace | None:
    """The size and free space of the shared-memory file system, or ``None`` without one.

    Args:
        path: The mount point (default :data:`SHARED_MEMORY_PATH`).
        statvfs: Reads a file system's sizes, as ``os.statvfs`` (the default) does.

    Returns:
        ``None`` where the system has no ``statvfs`` (Windows) or no such folder (macOS).
    """
    where = os.fspath(SHARED_MEMORY_PATH if path is None else path)
    read = statvfs if statvfs is not None else getattr(os, "statvfs", None)
    if read is None or not os.path.isdir(where):
        return None
    try:
        stats = read(where)
    except OSError:
        return None
    block = int(stats.f_frsize) or int(stats.f_bsize)
    return SharedMemorySpace(where, int(stats.f_blocks) * block, int(stats.f_bavail) * block)


def sample_bytes(item: Any) -> int:
    """Bytes one sample adds to a collated batch: its tensors' and arrays', 8 per number.

    Looks through tuples, lists and mappings; anything else (strings, file names) travels
    through the worker's pipe rather than shared memory and counts 0.
    """
    if isinstance(item, bool | int | float):
        return 8  # collated into an int64 / float64 tensor
    nbytes = getattr(item, "nbytes", None)  # tensors and numpy arrays, with their own dtype
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(item, Mapping):
        return sum(sample_bytes(value) for value in item.values())
    if isinstance(item, tuple | list):
        return sum(sample_bytes(value) for value in item)
    return 0


def in_flight_batches(workers: int, prefetch_factor: int) -> int:
    """Batches in shared memory at once: ``prefetch_factor`` per worker and the one in use."""
    return workers * prefetch_factor + 1 if workers > 0 else 0


def workers_that_fit(workers: int, *, prefetch_factor: int, batch_bytes: int, free: int) -> int:
    """The most workers, up to ``workers``, whose batches in flight fit ``free`` bytes.

    They fit when they take at most :data:`SHARED_MEMORY_SHARE` of it; 0 when not even one
    worker's do (the main process then reads the data, without shared memory).
    """
    budget = free * SHARED_MEMORY_SHARE
    for count in range(workers, 0, -1):
        if in_flight_batches(count, prefetch_factor) * batch_bytes <= budget:
            return count
    return 0


def suggested_shm_size(needed: int) -> str:
    """A ``docker run --shm-size`` value that holds ``needed`` bytes in flight: ``"2g"``."""
    gib = math.ceil(needed / SHARED_MEMORY_SHARE / 2**30)
    return f"{max(gib, 1)}g"


def is_shared_memory_error(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a worker that ran out of shared memory.

    Its causes count: when the main process was waiting for a batch, torch's ``SIGCHLD``
    handler's "killed by signal: Bus error" becomes the cause of a plain "DataLoader worker
    (pid(s) N) exited unexpectedly".
    """
    return _torch_line(error) is not None


def shared_memory_error(
    error: BaseException,
    *,
    workers: int | None,
    batch_size: int | None,
    space: SharedMemorySpace | None,
    loop: ReadingLoop = "extraction",
) -> SharedMemoryError:
    """The :class:`SharedMemoryError` for torch's ``error``: what happened, the sizes, what
    the ``loop`` kept (an extraction resumes), the fixes.

    One paragraph on one line (the command line prints an error's first line). The fixes
    name the Python arguments (``num_workers=0``, ``batch_size``); the command line shows
    its options instead.
    """
    where = (
        f"{space.path} ({format_bytes(space.size)}, {format_bytes(space.free)} free now)"
        if space is not None
        else "shared memory"
    )
    reading = []
    if workers is not None:
        reading.append(f"{workers} worker process{'es' if workers != 1 else ''}")
    if batch_size is not None:
        reading.append(f"batches of {batch_size} samples")
    how = f" with {' and '.join(reading)}" if reading else ""
    reported = _torch_line(error) or str(error).strip().split("\n")[0]
    message = (
        f"the DataLoader ran out of shared memory{how} ({reported}): its workers hand every "
        f"batch to this process through {where}. {AFTER_FAILURE[loop]}. To fix it, read "
        "in this process with "
        "num_workers=0 (slower), give the container more shared memory (docker run "
        "--shm-size=2g, or --ipc=host), or use a smaller batch_size"
    )
    return SharedMemoryError(message)


def _torch_line(error: BaseException) -> str | None:
    """The line of torch's message, or of one of its causes', that says what ran out."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for line in str(current).splitlines():
            if any(signature.search(line) for signature in _SIGNATURES):
                return line.strip()
        current = current.__cause__ or current.__context__
    return None
