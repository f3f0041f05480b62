"""Errors reading the data, raised as the dataset raised them, naming the sample.

With or without workers: a worker hands the error back as data (a :class:`SampleFailure`),
and it is raised again in the main process as it was (an
:class:`~dinov2_heads.data.UnreadableImageError` names its file), rather than as torch's
"Caught ... in DataLoader worker process 0"; a note names the sample (for an
``IterableDataset`` of a ``DataLoader``: the worker, and the item's position in that worker's
share). Samples that cannot be stacked into one batch (images of different sizes) are a
``ValueError`` that names them.

A map-style dataset is read through :class:`ReportingDataset` with a
:class:`ReportingCollate`, an ``IterableDataset`` through :func:`reporting_loader`;
:mod:`~dinov2_heads.cache.source` raises the failures as their batches come.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from dinov2_heads.cache.loader_settings import Collate, LoaderSettings

__all__ = [
    "ReportingCollate",
    "ReportingDataset",
    "SampleFailure",
    "ShortBatch",
    "reporting_loader",
]

#: How torch's ``default_collate`` says that the samples of a batch differ in size.
_UNEQUAL_SIZES = "stack expects each tensor to be equal size"


@dataclass
class SampleFailure:
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


def _failure(index: int | None, error: Exception) -> SampleFailure:
    """The failure to hand back for ``error``: as it is in this process; from a worker, with
    its traceback as text, its id, and as a ``RuntimeError`` with its text where it cannot
    travel to the main process."""
    info = get_worker_info()
    if info is None:
        return SampleFailure(index, error)  # raised again as it is, traceback and all
    trace = "".join(traceback.format_exception(error))
    if not _travels(error):
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return SampleFailure(index, error, trace, worker=info.id)


def _travels(error: BaseException) -> bool:
    """Whether ``error`` survives the trip to the main process: pickled here, rebuilt there.

    Pickling alone is not enough: an exception whose ``__init__`` takes other arguments than
    its message (``MyError(path, reason)`` calling ``super().__init__(text)``) pickles, but
    is rebuilt from its message only, and the main process would raise torch's ``TypeError``
    about missing arguments instead of it.
    """
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


class _Wrapping:
    """The attributes of the wrapped ``dataset`` read through the wrapper: a
    ``worker_init_fn`` that reaches the dataset through ``get_worker_info()`` reads its own."""

    dataset: Any

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (while unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ReportingDataset(_Wrapping, Dataset[Any]):
    """A dataset whose items are the wrapped dataset's, or a :class:`SampleFailure`."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as error:
            return _failure(index, error)


class _ReportingStream(_Wrapping, IterableDataset[Any]):
    """An ``IterableDataset`` whose items are the wrapped one's, then, where reading one
    raises, a :class:`SampleFailure` that names its position (in this worker's share), and no more.
    """

    def __init__(self, dataset: IterableDataset[Any]) -> None:
        self.dataset = dataset

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
class ShortBatch:
    """What :class:`ReportingCollate` hands back for a batch shorter than ``drop_short``."""


class ReportingCollate:
    """The collate function, unless the batch holds a failure (then the first failure), or
    the collate function fails (then that failure). ``batched=False``: the loader hands over
    one item at a time (``batch_size=None``), not a list. ``drop_short``: a batch of fewer
    items, without a failure, is a :class:`ShortBatch` (``drop_last``)."""

    def __init__(
        self, collate: Collate, *, batched: bool = True, drop_short: int | None = None
    ) -> None:
        self.collate = collate
        self.batched = batched
        self.drop_short = drop_short

    def __call__(self, items: Any) -> Any:
        if not self.batched:
            if isinstance(items, SampleFailure):
                return items
            try:
                return self.collate(items)
            except Exception as error:
                return _failure(None, error)
        for item in items:
            if isinstance(item, SampleFailure):
                return item
        if self.drop_short is not None and len(items) < self.drop_short:
            return ShortBatch()
        try:
            return self.collate(items)
        except Exception as error:
            return _failure(None, error)


def reporting_loader(loader: DataLoader[Any]) -> DataLoader[Any]:
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
        collate_fn=ReportingCollate(
            loader.collate_fn,
            batched=loader.batch_size is not None,
            drop_short=loader.batch_size if loader.drop_last else None,
        ),
        **LoaderSettings.of(loader).arguments(),
    )
