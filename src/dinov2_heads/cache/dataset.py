"""``FeatureDataset``: a ``Dataset`` over a feature store that yields ``Features`` and labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dinov2_heads.cache.parts import FeatureParts, Parts
from dinov2_heads.features import Features

__all__ = ["FeatureDataset", "FeatureSource", "collate_features"]


@runtime_checkable
class FeatureSource(Protocol):
    """What :class:`FeatureDataset` reads: a :class:`~dinov2_heads.cache.FeatureStore`."""

    def __len__(self) -> int: ...

    @property
    def label_names(self) -> tuple[str, ...]: ...

    @property
    def has_labels(self) -> bool: ...

    def check_blocks(self, n_blocks: int | None) -> int: ...

    def check_heads(self, heads: nn.Module) -> None: ...

    def features(
        self, index: Tensor, *, n_blocks: int | None = None, parts: Parts | None = None
    ) -> Features: ...

    def parts_for(self, heads: nn.Module) -> FeatureParts | None: ...

    def labels(self, index: Tensor, column: str | None = None) -> Tensor | dict[str, Tensor]: ...

    def sample_ids(self, index: Tensor | None = None) -> Tensor: ...


class FeatureDataset(Dataset[Any]):
    """Samples of a :class:`FeatureStore` as ``(Features, label)``, like ``(image, label)``.

    A training loop written for live features (``features = frozen(images)``) works unchanged
    on the cache: each item is already the :class:`~dinov2_heads.features.Features` (float32)
    of one sample, with a batch dimension of 1, and :func:`collate_features` joins them.
    Batches are read in one indexing operation (``__getitems__``), not sample by sample.

    Items are ``(features, label)``; ``features`` alone when the store has no labels; with
    ``return_ids=True`` the int64 sample id is appended. Masks come as int64 (B, H, W) and
    depth maps as float32, as the data gave them, so a segmentation or depth head trains on
    ``(features, masks)`` as it does on ``(frozen(images), masks)``.

    Args:
        store: The feature store.
        label: The label to yield: a column of dict labels, or the name of the one label
            tensor (``"label"`` unless the data named it; see ``store.label_names``). ``None``
            yields every label: the tensor, or a dict of all columns.
        n_blocks: Yield only the last ``n_blocks`` blocks (all stored ones by default); a
            head that needs more blocks than were stored is refused here.
        heads: The head (or ``MultiHead``, or ``LinearProbeGrid``) that will train on the
            items: refused here, with :class:`~dinov2_heads.cache.StoreMismatchError` naming
            the blocks it reads and those stored, when the store lacks any (see
            ``FeatureStore.check_heads``). Only what these heads read is read
            (``FeatureStore.parts_for``): for linear heads, the class tokens and the mean
            patch token, not the patch tokens or the chosen blocks; another head given the
            items raises a ``ValueError`` if it needs a part left out. A head that does not
            declare what it reads (your own) has everything read.
        parts: Read only these parts (as for ``FeatureStore.features``, such as
            ``"pooled"``), whatever ``heads`` read; ``None`` reads what ``heads`` read, or
            everything without ``heads``.
        return_ids: Append the sample id to each item.

    Example:
        ``loader = DataLoader(FeatureDataset(store), batch_size=256, shuffle=True,
        collate_fn=collate_features)``, or simply ``FeatureDataset(store).loader(256)``.
    """

    def __init__(
        self,
        store: FeatureSource,
        *,
        label: str | None = None,
        n_blocks: int | None = None,
        heads: nn.Module | None = None,
        parts: Parts | None = None,
        return_ids: bool = False,
    ) -> None:
        if not isinstance(store, FeatureSource):
            raise TypeError(
                f"FeatureDataset needs a FeatureStore, got {type(store).__name__}; open one "
                "with FeatureStore.open(path) or make it with extract_features(...)"
            )
        names = store.label_names
        if label is not None and label not in names:
            have = f"the labels {list(names)}" if names else "no labels"
            raise ValueError(f"label={label!r} is not a label of the store; it has {have}")
        self.store = store
        self.label = label
        self.n_blocks = store.check_blocks(n_blocks)
        if heads is not None:
            if not isinstance(heads, nn.Module):
                raise TypeError(
                    f"heads must be a head or a MultiHead (an nn.Module), got "
                    f"{type(heads).__name__}"
                )
            store.check_heads(heads)
        #: What each read takes from the store (``None``: everything it holds).
        self.parts: FeatureParts | None = (
            FeatureParts.of(parts)
            if parts is not None
            else store.parts_for(heads)
            if heads is not None
            else None
        )
        self.return_ids = return_ids

    def for_heads(self, heads: nn.Module) -> FeatureDataset:
        """The same samples, labels and ids, read for ``heads`` (see the ``heads`` argument)."""
        return FeatureDataset(
            self.store,
            label=self.label,
            n_blocks=self.n_blocks,
            heads=heads,
            return_ids=self.return_ids,
        )

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> Any:
        """Sample ``index`` with a batch dimension of 1 (collate with :func:`collate_features`)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} is out of range for {size} samples")
        return self._items(torch.tensor([index % size]))

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A whole batch in one read; returned as a one-element list for the collate function."""
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        size = len(self)
        if rows.numel() and (int(rows.min()) < -size or int(rows.max()) >= size):
            raise IndexError(f"indices out of range for {size} samples")
        return [self._items(rows % size if rows.numel() else rows)]

    def _items(self, rows: Tensor) -> Any:
        features = self.store.features(rows, n_blocks=self.n_blocks, parts=self.parts)
        item: list[Any] = [features]
        if self.store.has_labels:
            item.append(self.store.labels(rows, column=self.label))
        if self.return_ids:
            item.append(self.store.sample_ids(rows))
        return item[0] if len(item) == 1 else tuple(item)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> DataLoader[Any]:
        """A ``DataLoader`` over this dataset with :func:`collate_features`.

        Args:
            batch_size: Samples per batch.
            shuffle: Reshuffle every epoch.
            drop_last: Drop the last incomplete batch.
            num_workers: Worker processes (each reopens the memory maps).
            seed: Seed of the shuffling generator, for reproducible order.
        """
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=collate_features,
            generator=generator,
        )


def collate_features(items: Sequence[Any]) -> Any:
    """Join items that each carry a batch dimension: ``Features`` by ``Features.cat``.

    Works on what :class:`FeatureDataset` yields: a ``Features``, or tuples of ``Features``,
    label tensors (B, ...), dicts of label tensors and id tensors, all concatenated along the
    batch dimension. One pre-batched item (from ``__getitems__``) is returned as it is.
    """
    if not items:
        raise ValueError("cannot collate an empty list of samples")
    if len(items) == 1:
        return items[0]
    first = items[0]
    if isinstance(first, tuple | list):
        return tuple(_join([item[i] for item in items]) for i in range(len(first)))
    return _join(list(items))


def _join(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Features):
        return Features.cat(values)
    if isinstance(first, Tensor):
        return torch.cat(values)
    if isinstance(first, Mapping):
        return {key: torch.cat([value[key] for value in values]) for key in first}
    if first is None:
        return None
    raise TypeError(
        f"collate_features joins Features, tensors and dicts of tensors, got "
        f"{type(first).__name__}; use torch.utils.data.default_collate for other data"
    )
