"""Where the batches of an extraction come from: a ``Dataset``, a ``DataLoader`` or a tensor.

A map-style dataset (or a ``DataLoader`` over one that does not shuffle, or an image tensor)
is a :class:`MapSource`: its samples are read by index, so a resumed extraction reads only
the missing ones and ``torchrun`` processes each read their own share. Anything else that
``torch`` can iterate (an ``IterableDataset``, a ``DataLoader`` with its own batch sampler) is
a :class:`StreamSource`: read in order from the start, one process only.

How the samples are read (:class:`LoaderSettings`) is decided once, by
:func:`loader_settings`: with ``num_workers="auto"``, datasets that decode image files get
worker processes by the CPUs available, and batches go to a CUDA backbone through pinned
memory; a ``DataLoader`` given by the user keeps its own settings. Then
:func:`fit_shared_memory` checks that the workers' batches in flight fit the shared memory
they travel through (``/dev/shm``): ``"auto"`` starts fewer workers where they would not,
an explicit count and a user's ``DataLoader`` are kept, with a warning. A worker that runs out
all the same is reported by :func:`loader_failure` as a
:class:`~dinov2_heads.cache.errors.SharedMemoryError` that says what to do, and a worker
killed from outside (the out-of-memory killer's ``SIGKILL``) or crashed as a
:class:`~dinov2_heads.cache.errors.WorkerDiedError`.

The first sample, which the shared-memory estimate needs, is read in a worker process of its
own, as the extraction's workers will read it: the dataset in this process is not touched (a
dataset that opens its file, an HDF5 or LMDB handle or a zip archive on first use, as
such datasets should, would otherwise open it here and hand the open handle to every forked
worker). An ``IterableDataset`` is never read ahead (its first items may be gone once read):
its first batch is measured as it arrives.

Errors reading the data are raised as the dataset raised them, with or without workers: a
worker hands the error back as data, and it is raised again here as it was (an
:class:`~dinov2_heads.data.UnreadableImageError` names its file), rather than as torch's
"Caught ... in DataLoader worker process 0"; a note names the sample (for an
``IterableDataset`` of a ``DataLoader``: the worker, and the item's position in that worker's
share). Samples that cannot be stacked into one batch (images of different sizes) are a
``ValueError`` that names them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    get_worker_info,
)

from dinov2_heads import distributed
from dinov2_heads.cache.batches import batch_length
from dinov2_heads.cache.errors import ReadingLoop, SharedMemoryError, WorkerDiedError
from dinov2_heads.cache.layout import format_bytes
from dinov2_heads.cache.shared_memory import (
    SharedMemorySpace,
    in_flight_batches,
    is_shared_memory_error,
    sample_bytes,
    shared_memory_error,
    shared_memory_space,
    suggested_shm_size,
    workers_that_fit,
)
from dinov2_heads.cache.worker_death import dead_worker, worker_death_of, worker_died_error
from dinov2_heads.watchdog import format_duration

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_SAMPLE_TIMEOUT",
    "MAX_AUTO_WORKERS",
    "PREFETCH_FACTOR",
    "LoaderSettings",
    "MapSource",
    "NumWorkers",
    "StreamSource",
    "as_source",
    "available_cpus",
    "data_class_names",
    "first_sample_bytes",
    "fit_shared_memory",
    "loader_batch_size",
    "loader_failure",
    "loader_settings",
    "read_and_stop",
    "reading_failure",
    "reads_image_files",
]

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


# ---------------------------------------------------------------------- loader settings


@dataclass(frozen=True)
class LoaderSettings:
    """How the ``DataLoader`` that reads a map-style dataset is set up.

    Attributes:
        num_workers: Worker processes (0: read in the main process).
        pin_memory: Batches in page-locked memory, so the copy to a CUDA device is
            asynchronous and overlaps the backbone.
        prefetch_factor: Batches each worker prepares ahead (``None`` without workers).
        worker_init_fn: Called in each worker (a user's ``DataLoader``'s).
        multiprocessing_context: How workers start (a user's ``DataLoader``'s).
        generator: Seeds the workers (a user's ``DataLoader``'s).
        timeout: Seconds to wait for a batch from a worker (0: no limit).

    Workers are never persistent: an extraction reads its data once.
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


def loader_failure(
    error: BaseException, source: MapSource | StreamSource
) -> SharedMemoryError | WorkerDiedError | None:
    """The error to raise from ``error`` (chained) when it is torch's report of a worker that
    ran out of shared memory (:class:`~dinov2_heads.cache.errors.SharedMemoryError`) or died
    otherwise (:class:`~dinov2_heads.cache.errors.WorkerDiedError`); else ``None``."""
    if isinstance(source, MapSource):
        workers: int | None = source.num_workers
        batch_size: int | None = source.batch_size
    elif isinstance(source.stream, DataLoader):
        workers, batch_size = source.stream.num_workers, loader_batch_size(source.stream)
    else:
        workers = batch_size = None
    return reading_failure(error, workers=workers, batch_size=batch_size)


def reading_failure(
    error: BaseException,
    *,
    workers: int | None,
    batch_size: int | None,
    loop: ReadingLoop = "extraction",
) -> SharedMemoryError | WorkerDiedError | None:
    """:func:`loader_failure` for a ``loop`` that reads with ``workers`` worker processes and
    batches of ``batch_size`` (``None``: unknown), such as a training over a ``DataLoader``."""
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


def _within_shared_memory(
    settings: LoaderSettings, dataset: Dataset[Any], batch_size: int, chosen: Chosen
) -> LoaderSettings:
    """:func:`fit_shared_memory` with this machine's ``/dev/shm`` and the first sample's size.

    The first sample is read (in a worker process, see :func:`first_sample_bytes`) only when
    there are workers and a shared-memory file system to check.
    """
    if settings.num_workers == 0:
        return settings
    space = shared_memory_space()
    if space is None:
        return settings
    return fit_shared_memory(
        settings,
        batch_bytes=first_sample_bytes(dataset, settings) * batch_size,
        batch_size=batch_size,
        space=space,
        chosen=chosen,
        processes=local_processes(),
    )


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


@dataclass(frozen=True)
class MapSource:
    """Samples read by index from a map-style dataset.

    Attributes:
        dataset: The dataset.
        count: Its length.
        batch_size: Samples per backbone call (per process).
        loader: How the ``DataLoader`` reads it (workers, pinned memory, prefetching).
        collate_fn: How items become a batch (``default_collate`` when ``None``).
    """

    dataset: Dataset[Any]
    count: int
    batch_size: int
    loader: LoaderSettings = LoaderSettings()
    collate_fn: Collate | None = None

    @property
    def num_workers(self) -> int:
        """``DataLoader`` worker processes."""
        return self.loader.num_workers

    def batches(self, indices: list[list[int]]) -> Generator[Any, None, None]:
        """One batch per list of indices, in order; closing it stops the workers.

        An error reading a sample or making a batch is raised as it was raised, with a note
        that names the sample(s); samples that cannot be stacked into one batch are a
        ``ValueError`` that names them.
        """
        loader = DataLoader(
            _Reporting(self.dataset),
            batch_sampler=indices,
            collate_fn=_ReportingCollate(self.collate_fn or default_collate),
            **self.loader.arguments(),
        )
        in_worker = self.num_workers > 0
        with contextlib.closing(read_and_stop(loader)) as batches:
            for number, batch in enumerate(batches):
                if isinstance(batch, _Failure):
                    batch.raise_again(indices[number], in_worker=in_worker)
                yield batch

    def first_image_size(self) -> tuple[int, int] | None:
        """(H, W) of the first image when it is a plain (3, H, W) tensor (else ``None``)."""
        if not self.count or self.collate_fn not in (None, default_collate):
            return None  # a custom collate function may resize or otherwise change the images
        item = self.dataset[0]
        image = item[0] if isinstance(item, tuple | list) and item else item
        if not isinstance(image, Tensor) or image.ndim != 3:
            return None
        return int(image.shape[-2]), int(image.shape[-1])


@dataclass(frozen=True)
class StreamSource:
    """Batches in order from an iterable; ``count`` is ``None`` when unknown.

    Attributes:
        stream: The batches: a ``DataLoader``, or any iterable of batches.
        count: Samples in all, or ``None`` when unknown.
        check: For a ``DataLoader`` over an ``IterableDataset`` with workers: how its workers
            were chosen (``"asked"``, ``"loader"``), so that its first batch, as it
            arrives, is checked against the shared memory (a warning where the batches in
            flight may not fit); ``None``: not checked here.
    """

    stream: Iterable[Any]
    count: int | None
    check: Chosen | None = None

    @property
    def num_workers(self) -> int:
        """``DataLoader`` worker processes (0 for an iterable that is not a ``DataLoader``)."""
        return self.stream.num_workers if isinstance(self.stream, DataLoader) else 0

    def batches(self) -> Generator[Any, None, None]:
        """The stream's batches, in order; closing it stops a ``DataLoader``'s workers.

        An error the ``IterableDataset`` of a ``DataLoader`` raises is raised as it was, with
        a note that names the item: its position in the stream, and with workers, the worker
        and the item's position in that worker's share (see :func:`_reporting_loader`).
        """
        if not isinstance(self.stream, DataLoader):
            yield from self.stream
            return
        workers = self.stream.num_workers
        check = self.check if workers > 0 else None
        # Measured before the workers start, so that their batches are not counted as used.
        space = shared_memory_space() if check is not None else None
        loader = _reporting_loader(self.stream)
        with contextlib.closing(read_and_stop(loader)) as batches:
            for batch in batches:
                if isinstance(batch, _Failure):
                    batch.raise_from_stream(workers=workers)
                if isinstance(batch, _Short):
                    continue  # a worker's last batch, short: drop_last drops it
                if check is not None and space is not None:
                    _first_batch_fits(self.stream, batch, space, check)
                check = None
                yield batch


def _reporting_loader(loader: DataLoader[Any]) -> DataLoader[Any]:
    """``loader`` reading its ``IterableDataset`` through :class:`_ReportingStream`, so an
    error the dataset raises comes back as data that names the item (worker, position).

    The same settings (batch size, ``drop_last``, collate function, workers and their set-up);
    a subclass of ``DataLoader`` (which may read differently) and a loader over a map-style
    dataset are used as they are.
    """
    if type(loader) is not DataLoader or not isinstance(loader.dataset, IterableDataset):
        return loader
    # drop_last is applied by the collate function: torch would drop a short last batch
    # before collating it, and with it the failure that ended the worker's share.
    return DataLoader(
        _ReportingStream(loader.dataset),
        batch_size=loader.batch_size,
        collate_fn=_ReportingCollate(
            loader.collate_fn,
            batched=loader.batch_size is not None,
            drop_short=loader.batch_size if loader.drop_last else None,
        ),
        **LoaderSettings.of(loader).arguments(),
    )


def _first_batch_fits(
    loader: DataLoader[Any], batch: Any, space: SharedMemorySpace, chosen: Chosen
) -> None:
    """:func:`fit_shared_memory` for the batches of ``loader``, measured on its first ``batch``:
    a warning where the batches in flight may not fit ``space`` (the workers are kept)."""
    try:
        size = batch_length(batch)
    except Exception:  # a batch the extraction cannot take says so itself, a moment later
        size = loader_batch_size(loader) or 0
    fit_shared_memory(
        LoaderSettings.of(loader),
        batch_bytes=sample_bytes(batch),
        batch_size=size,
        space=space,
        chosen=chosen,
        processes=local_processes(),
    )


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


def as_source(
    data: Any,
    batch_size: int,
    num_workers: NumWorkers,
    *,
    device: torch.device | None = None,
) -> MapSource | StreamSource:
    """The source of ``data``: a ``Dataset``, a ``DataLoader`` or an image tensor (N, 3, H, W).

    Args:
        data: What to read.
        batch_size: Samples per batch (a ``DataLoader``'s own wins).
        num_workers: ``"auto"`` or a count, for a ``Dataset`` (see :func:`loader_settings`).
        device: The backbone's device (default the CPU): pinned memory for CUDA.

    Raises:
        TypeError: For anything else, saying what to pass instead.
        ValueError: For a ``DataLoader`` that shuffles (the store keeps data order), or a
            ``num_workers`` that is neither ``"auto"`` nor an int >= 0.
    """
    device = device if device is not None else torch.device("cpu")
    check_num_workers(num_workers)
    if isinstance(data, DataLoader):
        return _loader_source(data)
    if isinstance(data, IterableDataset):
        # Unknown length; "auto" gives no workers to an iterable (each would yield it all).
        settings = loader_settings(num_workers, data="other", batches=0, device=device)
        loader = DataLoader(data, batch_size=batch_size, **settings.arguments())
        # Workers asked for: their first batch is measured as it arrives (an iterable may
        # not yield its first items twice, so nothing is read ahead).
        return StreamSource(loader, None, check="asked")
    if isinstance(data, Dataset):
        count = len(data)  # type: ignore[arg-type]
        kind: DataKind = "files" if reads_image_files(data) else "other"
        batches = math.ceil(count / batch_size) if batch_size > 0 else 0
        settings = loader_settings(num_workers, data=kind, batches=batches, device=device)
        chosen: Chosen = "auto" if num_workers == "auto" else "asked"
        settings = _within_shared_memory(settings, data, batch_size, chosen)
        return MapSource(data, count, batch_size, settings)
    if isinstance(data, Tensor):
        if data.ndim != 4:
            raise TypeError(
                f"an image tensor must be (N, 3, H, W), got shape {tuple(data.shape)}; wrap "
                "images with labels in a Dataset (torch.utils.data.TensorDataset(images, labels))"
            )
        return MapSource(TensorDataset(data), int(data.shape[0]), batch_size)
    raise TypeError(
        "data must be a torch Dataset, a DataLoader or an image tensor (N, 3, H, W), got "
        f"{type(data).__name__}; wrap a list of (image, label) samples in a Dataset, or an "
        "iterable of batches in an IterableDataset"
    )


def _loader_source(loader: DataLoader[Any]) -> MapSource | StreamSource:
    dataset = loader.dataset
    settings = LoaderSettings.of(loader)
    if not isinstance(dataset, IterableDataset) and loader.batch_size is not None:
        if not isinstance(loader.sampler, SequentialSampler):
            raise ValueError(
                "extract_features stores samples in data order, but this DataLoader "
                "shuffles (its sampler is not sequential); pass shuffle=False or the "
                "Dataset itself"
            )
        # Only checked, never changed: the warning says what would fit.
        _within_shared_memory(settings, dataset, loader.batch_size, "loader")
        return MapSource(
            dataset,
            len(dataset),  # type: ignore[arg-type]
            loader.batch_size,
            settings,
            loader.collate_fn,
        )
    batch_size = loader_batch_size(loader)
    if not isinstance(dataset, IterableDataset) and batch_size is not None:
        _within_shared_memory(settings, dataset, batch_size, "loader")
    if isinstance(dataset, IterableDataset):
        return StreamSource(loader, None, check="loader")
    return StreamSource(loader, len(dataset))  # type: ignore[arg-type]


def data_class_names(data: Any) -> dict[str, tuple[str, ...]]:
    """The class names the data knows (its ``vocabularies``), looking through loaders and subsets.

    ``ImageFolderDataset``, ``ManifestDataset`` and ``SyntheticVehicles`` have
    ``vocabularies``: ``{label name: class names}``; a ``DataLoader`` or ``Subset`` passes
    its ``dataset``'s on.
    """
    for _ in range(8):
        vocabularies = getattr(data, "vocabularies", None)
        if isinstance(vocabularies, Mapping):
            return {
                str(name): tuple(str(item) for item in names)
                for name, names in vocabularies.items()
                if isinstance(names, Sequence) and not isinstance(names, str)
            }
        data = getattr(data, "dataset", None)
        if data is None:
            break
    return {}


# ---------------------------------------------------------------------- errors reading


#: How torch's ``default_collate`` says that the samples of a batch differ in size.
_UNEQUAL_SIZES = "stack expects each tensor to be equal size"


@dataclass
class _Failure:
    """An error raised reading sample ``index`` (``None``: making the batch), carried back
    from a worker as data, with the worker's traceback (``None`` in this process, where the
    error keeps its own).

    For an ``IterableDataset``, ``index`` is the item's position in the stream read by
    ``worker`` (its id; ``None`` in this process), counted from 0.
    """

    index: int | None
    error: BaseException
    trace: str | None = None
    worker: int | None = None

    def raise_again(self, indices: Sequence[int], *, in_worker: bool) -> None:
        """Raise the error with a note naming the sample, or the batch of ``indices``, and a
        note holding the worker's traceback."""
        error = self.error
        where = " in a DataLoader worker process" if in_worker else ""
        if self.index is None:
            samples = _samples(indices)
            if isinstance(error, RuntimeError) and _UNEQUAL_SIZES in str(error):
                raise ValueError(
                    f"{samples} cannot be stacked into one batch: {error}. Every image (and "
                    "every mask or depth map) must have the same size: give the dataset a "
                    "transform with a fixed output size (a Preprocess with resize and crop; "
                    "--size H W on the command line)"
                ) from error
            _add_note(error, f"(while making one batch of {samples}{where})")
        else:
            _add_note(error, f"(while reading sample {self.index} of the data{where})")
        if self.trace:
            _add_note(error, f"The worker's traceback:\n{self.trace.rstrip()}")
        raise error

    def raise_from_stream(self, *, workers: int) -> None:
        """Raise the error of an ``IterableDataset`` read by ``workers`` worker processes,
        with a note naming the item (the worker and the item's position in its share) and
        what to do, and a note holding the worker's traceback."""
        error = self.error
        if self.worker is None:
            where = "the IterableDataset"
            fix = "fix or skip that item where its __iter__ yields it"
        else:
            where = (
                f"the share of DataLoader worker {self.worker} of {workers}: the items the "
                f"IterableDataset's __iter__ yields where get_worker_info().id == "
                f"{self.worker}, not the whole stream"
            )
            fix = (
                "fix or skip that item there, or read with num_workers=0 to raise it in "
                "this process with its whole traceback"
            )
        if self.index is None:
            if isinstance(error, RuntimeError) and _UNEQUAL_SIZES in str(error):
                raise ValueError(
                    f"the items of one batch of {where} cannot be stacked: {error}. Every "
                    "image (and every mask or depth map) must have the same size: give the "
                    "dataset a transform with a fixed output size"
                ) from error
            what = f"making one batch of the items of {where}"
        else:
            what = f"reading item {self.index} (counted from 0) of {where}"
        _add_note(error, f"(while {what}; {fix})")
        if self.trace:
            _add_note(error, f"The worker's traceback:\n{self.trace.rstrip()}")
        raise error


def _samples(indices: Sequence[int]) -> str:
    """``"samples 6 to 8"``, ``"samples 3, 9, 12"`` or ``"sample 4"``."""
    if len(indices) == 1:
        return f"sample {indices[0]}"
    if list(indices) == list(range(indices[0], indices[0] + len(indices))):
        return f"samples {indices[0]} to {indices[-1]}"
    return "samples " + ", ".join(str(index) for index in indices)


def _add_note(error: BaseException, note: str) -> None:
    add = getattr(error, "add_note", None)  # Python 3.11 and later
    if callable(add) and note not in getattr(error, "__notes__", ()):
        add(note)


def _failure(index: int | None, error: Exception) -> _Failure:
    """The failure to hand back for ``error``: as it is in this process; from a worker, with
    its traceback as text, its id, and as a ``RuntimeError`` with its text where it cannot be
    pickled."""
    info = get_worker_info()
    if info is None:
        return _Failure(index, error)  # raised again as it is, traceback and all
    trace = "".join(traceback.format_exception(error))
    try:
        pickle.dumps(error)
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return _Failure(index, error, trace, worker=info.id)


class _Reporting(Dataset[Any]):
    """A dataset whose items are the wrapped dataset's, or a :class:`_Failure`."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:
        # A worker_init_fn that reaches the dataset through get_worker_info() reads its own.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as error:
            return _failure(index, error)


class _ReportingStream(IterableDataset[Any]):
    """An ``IterableDataset`` whose items are the wrapped one's, then, where reading one
    raises, a :class:`_Failure` that names its position (in this worker's share), and no more.
    """

    def __init__(self, dataset: IterableDataset[Any]) -> None:
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:
        # A worker_init_fn that reaches the dataset through get_worker_info() reads its own.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __iter__(self) -> Iterator[Any]:
        position = 0
        try:
            items = iter(self.dataset)
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    return
                yield item
                position += 1
        except Exception as error:
            # After an error an iterator cannot go on: the worker's share ends here, and the
            # main process raises the error when its batch comes.
            yield _failure(position, error)


@dataclass(frozen=True)
class _Short:
    """What :class:`_ReportingCollate` hands back for a batch shorter than ``drop_short``."""


class _ReportingCollate:
    """The collate function, unless the batch holds a failure (then the first failure), or
    the collate function fails (then that failure). ``batched=False``: the loader hands over
    one item at a time (``batch_size=None``), not a list. ``drop_short``: a batch of fewer
    items, without a failure, is a :class:`_Short` (``drop_last``)."""

    def __init__(
        self, collate: Collate, *, batched: bool = True, drop_short: int | None = None
    ) -> None:
        self.collate = collate
        self.batched = batched
        self.drop_short = drop_short

    def __call__(self, items: Any) -> Any:
        if not self.batched:
            if isinstance(items, _Failure):
                return items
            try:
                return self.collate(items)
            except Exception as error:
                return _failure(None, error)
        for item in items:
            if isinstance(item, _Failure):
                return item
        if self.drop_short is not None and len(items) < self.drop_short:
            return _Short()
        try:
            return self.collate(items)
        except Exception as error:
            return _failure(None, error)
