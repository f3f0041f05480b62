"""Where the batches of an extraction come from: a ``Dataset``, a ``DataLoader`` or a tensor.

A map-style dataset (or a ``DataLoader`` over one that does not shuffle, or an image tensor)
is a :class:`MapSource`: its samples are read by index, so a resumed extraction reads only
the missing ones and ``torchrun`` processes each read their own share. Anything else that
``torch`` can iterate (an ``IterableDataset``, a ``DataLoader`` with its own batch sampler) is
a :class:`StreamSource`: read in order from the start, one process only.

How the samples are read (:class:`LoaderSettings`) is decided once, by
:func:`loader_settings`: with ``num_workers="auto"``, datasets that decode image files get
worker processes by the CPUs available, and batches go to a CUDA backbone through pinned
memory; a ``DataLoader`` given by the user keeps its own settings.

Image loading in ``DataLoader`` worker processes reports errors as the single-process path
does: the worker hands the error back as data, and it is raised again here as it was (an
:class:`~dinov2_heads.data.UnreadableImageError` names its file), rather than as torch's
"Caught ... in DataLoader worker process 0".
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
)

__all__ = [
    "MAX_AUTO_WORKERS",
    "PREFETCH_FACTOR",
    "LoaderSettings",
    "MapSource",
    "NumWorkers",
    "StreamSource",
    "as_source",
    "available_cpus",
    "data_class_names",
    "loader_settings",
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
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, cpus // max(local, 1))


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

    def batches(self, indices: list[list[int]]) -> Iterator[Any]:
        """One batch per list of indices, in order."""
        collate = self.collate_fn or default_collate
        if self.num_workers == 0:
            loader = DataLoader(
                self.dataset, batch_sampler=indices, collate_fn=collate, **self.loader.arguments()
            )
            yield from loader
            return
        loader = DataLoader(
            _Reporting(self.dataset),
            batch_sampler=indices,
            collate_fn=_ReportingCollate(collate),
            **self.loader.arguments(),
        )
        for batch in loader:
            if isinstance(batch, _Failure):
                batch.raise_again()
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
    """Batches in order from an iterable; ``count`` is ``None`` when unknown."""

    stream: Iterable[Any]
    count: int | None


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
        return StreamSource(loader, None)
    if isinstance(data, Dataset):
        count = len(data)  # type: ignore[arg-type]
        kind: DataKind = "files" if reads_image_files(data) else "other"
        batches = math.ceil(count / batch_size) if batch_size > 0 else 0
        settings = loader_settings(num_workers, data=kind, batches=batches, device=device)
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
    if not isinstance(dataset, IterableDataset) and loader.batch_size is not None:
        if not isinstance(loader.sampler, SequentialSampler):
            raise ValueError(
                "extract_features stores samples in data order, but this DataLoader "
                "shuffles (its sampler is not sequential); pass shuffle=False or the "
                "Dataset itself"
            )
        return MapSource(
            dataset,
            len(dataset),  # type: ignore[arg-type]
            loader.batch_size,
            LoaderSettings.of(loader),
            loader.collate_fn,
        )
    count = None if isinstance(dataset, IterableDataset) else len(dataset)  # type: ignore[arg-type]
    return StreamSource(loader, count)


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


# ---------------------------------------------------------------------- worker errors


@dataclass
class _Failure:
    """An error raised in a worker while reading sample ``index``, carried back as data."""

    index: int
    error: BaseException

    def raise_again(self) -> None:
        raise self.error


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
            try:
                pickle.dumps(error)
            except Exception:
                error = RuntimeError(f"{type(error).__name__}: {error}")
            return _Failure(index, error)


class _ReportingCollate:
    """The collate function, unless the batch holds a failure: then the (first) failure."""

    def __init__(self, collate: Collate) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, _Failure):
                return item
        return self.collate(items)
