"""Where the batches of an extraction come from: a ``Dataset``, a ``DataLoader`` or a tensor.

A map-style dataset (or a ``DataLoader`` over one that does not shuffle, or an image tensor)
is a :class:`MapSource`: its samples are read by index, so a resumed extraction reads only
the missing ones and ``torchrun`` processes each read their own share. Anything else that
``torch`` can iterate (an ``IterableDataset``, a ``DataLoader`` with its own batch sampler) is
a :class:`StreamSource`: read in order from the start, one process only.

How the samples are read is decided once, as the source is made
(:mod:`~dinov2_heads.cache.loader_settings`: workers, pinned memory, and whether the
workers' batches in flight fit the shared memory). An ``IterableDataset`` is never read
ahead (its first items may be gone once read): its first batch is measured as it arrives.
The batches are read with :func:`~dinov2_heads.cache.loader_reading.read_and_stop`, which
stops the workers however the reading ends. A worker that runs out of shared memory all the
same is reported by :func:`loader_failure` as a
:class:`~dinov2_heads.cache.errors.SharedMemoryError` that says what to do, and a worker
killed from outside (the out-of-memory killer's ``SIGKILL``) or crashed as a
:class:`~dinov2_heads.cache.errors.WorkerDiedError`. Errors reading the data are raised as
the dataset raised them, with a note that names the sample
(:mod:`~dinov2_heads.cache.sample_errors`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from dinov2_heads.cache.batches import batch_length
from dinov2_heads.cache.errors import SharedMemoryError, WorkerDiedError
from dinov2_heads.cache.loader_reading import read_and_stop, reading_failure
from dinov2_heads.cache.loader_settings import (
    Chosen,
    Collate,
    DataKind,
    LoaderSettings,
    NumWorkers,
    check_num_workers,
    first_sample_bytes,
    fit_shared_memory,
    loader_batch_size,
    loader_settings,
    local_processes,
    reads_image_files,
)
from dinov2_heads.cache.sample_errors import (
    ReportingCollate,
    ReportingDataset,
    SampleFailure,
    ShortBatch,
    reporting_loader,
)
from dinov2_heads.cache.shared_memory import SharedMemorySpace, sample_bytes, shared_memory_space

__all__ = [
    "MapSource",
    "StreamSource",
    "as_source",
    "data_class_names",
    "loader_failure",
]


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
    loader: LoaderSettings = LoaderSettings()  # noqa: RUF009 - frozen, so shared safely
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
            ReportingDataset(self.dataset),
            batch_sampler=indices,
            collate_fn=ReportingCollate(self.collate_fn or default_collate),
            **self.loader.arguments(),
        )
        in_worker = self.num_workers > 0
        with contextlib.closing(read_and_stop(loader)) as batches:
            for number, batch in enumerate(batches):
                if isinstance(batch, SampleFailure):
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
        and the item's position in that worker's share (see
        :func:`~dinov2_heads.cache.sample_errors.reporting_loader`).
        """
        if not isinstance(self.stream, DataLoader):
            yield from self.stream
            return
        workers = self.stream.num_workers
        check = self.check if workers > 0 else None
        # Measured before the workers start, so that their batches are not counted as used.
        space = shared_memory_space() if check is not None else None
        loader = reporting_loader(self.stream)
        with contextlib.closing(read_and_stop(loader)) as batches:
            for batch in batches:
                if isinstance(batch, SampleFailure):
                    batch.raise_from_stream(workers=workers)
                if isinstance(batch, ShortBatch):
                    continue  # a worker's last batch, short: drop_last drops it
                if check is not None and space is not None:
                    _first_batch_fits(self.stream, batch, space, check)
                check = None
                yield batch


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
