"""Where the batches of an extraction come from: a ``Dataset``, a ``DataLoader`` or a tensor.

A map-style dataset (or a ``DataLoader`` over one that does not shuffle, or an image tensor)
is a :class:`MapSource`: its samples are read by index, so a resumed extraction reads only
the missing ones and ``torchrun`` processes each read their own share. Anything else that
``torch`` can iterate (an ``IterableDataset``, a ``DataLoader`` with its own batch sampler) is
a :class:`StreamSource`: read in order from the start, one process only.

Image loading in ``DataLoader`` worker processes reports errors as the single-process path
does: the worker hands the error back as data, and it is raised again here as it was (an
:class:`~dinov2_heads.data.UnreadableImageError` names its file), rather than as torch's
"Caught ... in DataLoader worker process 0".
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

__all__ = ["MapSource", "StreamSource", "as_source", "data_class_names"]

Collate = Callable[[list[Any]], Any]


@dataclass(frozen=True)
class MapSource:
    """Samples read by index from a map-style dataset.

    Attributes:
        dataset: The dataset.
        count: Its length.
        batch_size: Samples per backbone call (per process).
        num_workers: ``DataLoader`` worker processes.
        collate_fn: How items become a batch (``default_collate`` when ``None``).
    """

    dataset: Dataset[Any]
    count: int
    batch_size: int
    num_workers: int = 0
    collate_fn: Collate | None = None

    def batches(self, indices: list[list[int]]) -> Iterator[Any]:
        """One batch per list of indices, in order."""
        collate = self.collate_fn or default_collate
        if self.num_workers == 0:
            loader = DataLoader(self.dataset, batch_sampler=indices, collate_fn=collate)
            yield from loader
            return
        loader = DataLoader(
            _Reporting(self.dataset),
            batch_sampler=indices,
            num_workers=self.num_workers,
            collate_fn=_ReportingCollate(collate),
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


def as_source(data: Any, batch_size: int, num_workers: int) -> MapSource | StreamSource:
    """The source of ``data``: a ``Dataset``, a ``DataLoader`` or an image tensor (N, 3, H, W).

    Raises:
        TypeError: For anything else, saying what to pass instead.
        ValueError: For a ``DataLoader`` that shuffles (the store keeps data order).
    """
    if isinstance(data, DataLoader):
        return _loader_source(data)
    if isinstance(data, IterableDataset):
        loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        return StreamSource(loader, None)
    if isinstance(data, Dataset):
        return MapSource(data, len(data), batch_size, num_workers)  # type: ignore[arg-type]
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
            loader.num_workers,
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
