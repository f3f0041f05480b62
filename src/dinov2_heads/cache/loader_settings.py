"""How the ``DataLoader`` that reads an extraction's samples is set up.

How the samples are read (:class:`LoaderSettings`) is decided once, by
:func:`loader_settings`: with ``num_workers="auto"``, datasets that decode image files get
worker processes by the CPUs available, and batches go to a CUDA backbone through pinned
memory; a ``DataLoader`` given by the user keeps its own settings. Then
:func:`fit_shared_memory` checks that the workers' batches in flight fit the shared memory
they travel through (``/dev/shm``, measured by :mod:`~dinov2_heads.cache.shared_memory`):
``"auto"`` starts fewer workers where they would not, an explicit count and a user's
``DataLoader`` are kept, with a warning.

The first sample, which the shared-memory estimate needs, is read by
:func:`first_sample_bytes` in a worker process of its own, as the extraction's workers will
read it: the dataset in this process is not touched (a dataset that opens its file, an HDF5
or LMDB handle or a zip archive on first use, as such datasets should, would otherwise open it
here and hand the open handle to every forked worker).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from dinov2_heads import distributed
from dinov2_heads.cache.layout import format_bytes
from dinov2_heads.cache.loader_reading import read_and_stop
from dinov2_heads.cache.shared_memory import (
    SharedMemorySpace,
    in_flight_batches,
    sample_bytes,
    suggested_shm_size,
    workers_that_fit,
)
from dinov2_heads.watchdog import format_duration

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_SAMPLE_TIMEOUT",
    "MAX_AUTO_WORKERS",
    "PREFETCH_FACTOR",
    "Chosen",
    "Collate",
    "DataKind",
    "LoaderSettings",
    "NumWorkers",
    "available_cpus",
    "check_num_workers",
    "first_sample_bytes",
    "fit_shared_memory",
    "loader_batch_size",
    "loader_settings",
    "local_processes",
    "reads_image_files",
]

#: A ``DataLoader``'s collate function: the items of one batch -> the batch.
Collate = Callable[[list[Any]], Any]

#: ``num_workers`` as ``extract_features`` takes it: a count, or ``"auto"``.
NumWorkers = int | Literal["auto"]

#: The most worker processes ``"auto"`` starts (in each process under ``torchrun``).
MAX_AUTO_WORKERS = 16

#: Batches each worker prepares ahead. With several workers that is already twice as many
#: batches as workers in flight; more would only hold more shared memory.
PREFETCH_FACTOR = 2

#: Seconds the worker that reads the first sample for the shared-memory estimate may take;
#: past that the estimate is left out (with a warning) and the extraction starts as it is.
FIRST_SAMPLE_TIMEOUT = 120.0

#: What the data is, for the ``"auto"`` choices: a dataset that decodes image files, images
#: already in memory, or anything else (a user's dataset, an iterable).
DataKind = Literal["files", "tensors", "other"]


@dataclass(frozen=True)
class LoaderSettings:
    """How a ``DataLoader`` is set up: the one that reads a map-style dataset, or a copy of a
    user's ``DataLoader`` (:meth:`of`) that reads the same data through a wrapper.

    Attributes:
        num_workers: Worker processes (0: read in the main process).
        pin_memory: Batches in page-locked memory, so the copy to a CUDA device is
            asynchronous and overlaps the backbone.
        prefetch_factor: Batches each worker prepares ahead (``None`` without workers).
        worker_init_fn: Called in each worker (a user's ``DataLoader``'s).
        multiprocessing_context: How workers start (a user's ``DataLoader``'s).
        generator: Seeds the workers (a user's ``DataLoader``'s).
        timeout: Seconds to wait for a batch from a worker (0: no limit).

    Workers are never persistent: an extraction reads its data once, and a loader made from
    these settings is read once.
    """

    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    worker_init_fn: Callable[[int], None] | None = None
    multiprocessing_context: Any = None
    generator: torch.Generator | None = None
    timeout: float = 0.0

    @classmethod
    def of(cls, loader: DataLoader[Any]) -> LoaderSettings:
        """The settings of a user's ``DataLoader``, kept as they are."""
        workers = loader.num_workers
        return cls(
            num_workers=workers,
            pin_memory=loader.pin_memory,
            prefetch_factor=loader.prefetch_factor if workers else None,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            timeout=loader.timeout,
        )

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``DataLoader`` these settings stand for."""
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor if self.num_workers else None,
            "worker_init_fn": self.worker_init_fn,
            "multiprocessing_context": self.multiprocessing_context,
            "generator": self.generator,
            "timeout": self.timeout,
        }


def available_cpus() -> int:
    """The CPUs this process may use, shared with the other processes ``torchrun`` started here.

    The process's CPU affinity where the system has one (a container or ``taskset`` limits
    it), else every CPU of the machine; divided by ``LOCAL_WORLD_SIZE``, the processes on this
    machine, under ``torchrun``.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if callable(affinity) else (os.cpu_count() or 1)
    return max(1, cpus // local_processes())


def local_processes() -> int:
    """The processes on this machine: ``LOCAL_WORLD_SIZE`` under ``torchrun``, else 1."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(local, 1)


def check_num_workers(num_workers: object) -> None:
    """Raise ``ValueError`` unless ``num_workers`` is ``"auto"`` or an int >= 0."""
    if num_workers == "auto":
        return
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(
            f"num_workers must be 'auto' or a whole number >= 0, got {num_workers!r}; "
            "'auto' starts worker processes by the CPUs available for datasets that read image "
            "files, 0 reads in the main process"
        )


def loader_settings(
    num_workers: NumWorkers,
    *,
    data: DataKind,
    batches: int,
    device: torch.device,
    cpus: int | None = None,
) -> LoaderSettings:
    """The ``DataLoader`` settings for reading ``batches`` batches of ``data`` for ``device``.

    - Workers: an int is used as it is (tensors in memory are always read in the main
      process). ``"auto"`` starts ``min(cpus - 1, MAX_AUTO_WORKERS, batches)`` workers for a
      dataset that decodes image files (one CPU is left to the process that runs the
      backbone), none with fewer than two CPUs or two batches, and none for anything else:
      a user's dataset may keep state that worker processes would not share, so it gets
      workers when asked for them.
    - Pinned memory: with workers and a CUDA backbone, so a batch is copied to the GPU while
      the backbone still runs on the one before.
    - Prefetching: :data:`PREFETCH_FACTOR` batches per worker.

    Args:
        num_workers: ``"auto"`` or a count.
        data: ``"files"``, ``"tensors"`` or ``"other"`` (see :func:`reads_image_files`).
        batches: How many batches will be read.
        device: The device of the backbone.
        cpus: The CPUs to count on (default :func:`available_cpus`).

    Raises:
        ValueError: ``num_workers`` is neither ``"auto"`` nor an int >= 0.
    """
    check_num_workers(num_workers)
    if data == "tensors":
        workers = 0
    elif num_workers == "auto":
        cpus = available_cpus() if cpus is None else cpus
        if data != "files" or cpus < 2 or batches < 2:
            workers = 0
        else:
            workers = min(cpus - 1, MAX_AUTO_WORKERS, batches)
    else:
        workers = int(num_workers)
    return LoaderSettings(
        num_workers=workers,
        pin_memory=workers > 0 and device.type == "cuda",
        prefetch_factor=PREFETCH_FACTOR if workers else None,
    )


#: How the workers were chosen: by ``"auto"``, ``"asked"`` for as a count, or by the user's
#: own ``"loader"``. Only ``"auto"`` may be changed to fit the shared memory.
Chosen = Literal["auto", "asked", "loader"]


def fit_shared_memory(
    settings: LoaderSettings,
    *,
    batch_bytes: int,
    batch_size: int,
    space: SharedMemorySpace | None,
    chosen: Chosen,
    processes: int = 1,
) -> LoaderSettings:
    """``settings`` with no more workers than the shared memory ``space`` holds the batches of.

    The batches in flight are ``prefetch_factor`` per worker and the one in use, each of
    ``batch_bytes``; they fit when they take at most
    :data:`~dinov2_heads.cache.shared_memory.SHARED_MEMORY_SHARE` of the free space, shared by
    the ``processes`` that ``torchrun`` started on this machine.

    - ``chosen="auto"``: fewer workers, down to 0 (the main process reads, without shared
      memory), with a warning that says why, how much there is and the fix.
    - ``"asked"`` (an explicit count) and ``"loader"`` (a user's ``DataLoader``): kept as
      they are, with a warning that names the sizes and the fix.

    Nothing is checked without workers, without a shared-memory file system (``space`` is
    ``None``: macOS, Windows) or with an unknown batch size (``batch_bytes`` 0).
    """
    workers = settings.num_workers
    if workers == 0 or space is None or batch_bytes <= 0:
        return settings
    processes = max(processes, 1)
    prefetch = settings.prefetch_factor or PREFETCH_FACTOR
    fit = workers_that_fit(
        workers, prefetch_factor=prefetch, batch_bytes=batch_bytes, free=space.free // processes
    )
    if fit == workers:
        return settings
    in_flight = in_flight_batches(workers, prefetch)
    needed = in_flight * batch_bytes
    load = (
        f"{_workers(workers)}, which keep{'s' if workers == 1 else ''} up to {in_flight} "
        f"batches of {batch_size} samples ({format_bytes(batch_bytes)} each, "
        f"{format_bytes(needed)} in all) in shared memory"
    )
    room = f"{space.path} has {format_bytes(space.free)} free of {format_bytes(space.size)}"
    if processes > 1:
        room += f", shared by the {processes} processes on this machine"
    more = (
        f"give the container more shared memory (docker run "
        f"--shm-size={suggested_shm_size(needed * processes)}, or --ipc=host)"
    )
    log = logger.warning if distributed.local_rank() == 0 else logger.debug
    if chosen != "auto":
        whose = "as asked" if chosen == "asked" else "as the DataLoader has them"
        log(
            "the data may not fit in shared memory: %s, and %s; a worker that runs out dies "
            "with a bus error. Keeping the %d workers %s; use fewer workers, a smaller batch "
            "size, or %s",
            load,
            room,
            workers,
            whose,
            more,
        )
        return settings
    log(
        "%s: too little for %s. Reading with %s instead, which is slower; for %s, %s, or use "
        "a smaller batch size",
        room,
        load,
        _workers(fit) if fit else "no workers (in the main process)",
        "the worker" if workers == 1 else f"all {workers} workers",
        more,
    )
    return dataclasses.replace(
        settings,
        num_workers=fit,
        pin_memory=settings.pin_memory and fit > 0,
        prefetch_factor=settings.prefetch_factor if fit else None,
    )


def _workers(count: int) -> str:
    return f"{count} DataLoader worker{'' if count == 1 else 's'}"


def first_sample_bytes(
    dataset: Dataset[Any],
    settings: LoaderSettings = LoaderSettings(),
    *,
    timeout: float = FIRST_SAMPLE_TIMEOUT,
) -> int:
    """The bytes of the first sample's tensors (in their own dtype), 0 when unknown.

    The sample is read in one ``DataLoader`` worker process started as the extraction's
    workers are (``settings``' multiprocessing context and ``worker_init_fn``), which hands
    back only its size: the dataset in this process is not touched, so a file, database or
    archive that it opens on first use is opened in the workers only, as its author meant;
    and torch's random number generator is not drawn from (the worker's seed comes from a
    generator of its own), so the extraction's workers get the seeds they would get anyway.

    A sample that cannot be read, or takes more than ``timeout`` seconds, is not measured:
    the extraction reads it again and reports what is wrong where it belongs.
    """
    try:
        if not len(dataset):  # type: ignore[arg-type]
            return 0
    except TypeError:
        return 0
    loader = DataLoader(
        dataset,
        batch_sampler=[[0]],
        num_workers=1,
        collate_fn=_size_of_first,
        worker_init_fn=settings.worker_init_fn,
        multiprocessing_context=settings.multiprocessing_context,
        generator=torch.Generator(),
        timeout=timeout,
    )
    batches = read_and_stop(loader)
    try:
        return int(next(batches))
    except Exception as error:
        if "timed out" in str(error):
            logger.warning(
                "reading the first sample took more than %s, so the shared memory the "
                "workers need is not checked",
                format_duration(timeout),
            )
        else:
            logger.debug("shared memory not checked: reading the first sample failed: %s", error)
        return 0
    finally:
        batches.close()


def _size_of_first(items: list[Any]) -> int:
    """A collate function that hands back the size of the (only) sample instead of a batch."""
    return sample_bytes(items[0])


def loader_batch_size(loader: DataLoader[Any]) -> int | None:
    """Samples per batch of a ``DataLoader``: its own, its batch sampler's, or 1 unbatched."""
    if loader.batch_size is not None:
        return loader.batch_size
    if loader.batch_sampler is None:
        return 1  # automatic batching is off: each item is a batch
    size = getattr(loader.batch_sampler, "batch_size", None)
    return size if isinstance(size, int) else None


def reads_image_files(dataset: object) -> bool:
    """Whether ``dataset`` decodes image files, looking through ``Subset`` and ``ConcatDataset``.

    A dataset says so with a true class attribute ``reads_image_files``, as
    :class:`~dinov2_heads.data.ImageFolderDataset` and
    :class:`~dinov2_heads.data.ManifestDataset` do.
    """
    if isinstance(dataset, Subset):
        return reads_image_files(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return bool(dataset.datasets) and all(reads_image_files(d) for d in dataset.datasets)
    return getattr(dataset, "reads_image_files", False) is True
