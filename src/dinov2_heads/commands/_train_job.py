"""What every ``dinov2-heads train`` run shares: the store, the split, the loaders, the settings.

The grid, a spec of classifier heads and a spec of dense heads
(:mod:`~dinov2_heads.commands._train_dense`) all train from a :class:`Job`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dinov2_heads.watchdog import STALL_WARNING

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.utils.data import DataLoader

    from dinov2_heads.cache import FeatureStore

logger = logging.getLogger(__name__)

#: Spec training defaults (AdamW, cosine schedule), used unless the spec or options say.
DEFAULTS: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4}


@dataclass(frozen=True)
class Job:
    """The data a training run reads: the store, the split and where to run."""

    store: FeatureStore
    val_store: FeatureStore | None
    train_rows: Tensor
    val_rows: Tensor | None
    device: torch.device
    seed: int
    progress: bool

    def loader(
        self,
        label: str | None,
        *,
        train: bool,
        batch_size: int,
        heads: nn.Module | None = None,
    ) -> DataLoader[Any]:
        """Batches of ``(Features, labels)`` of the training or the validation samples.

        Training batches are shuffled by a generator seeded with :attr:`seed` (the same order
        as ``FeatureDataset(store).loader(batch_size, shuffle=True, drop_last=True,
        seed=seed)`` when every sample trains) and only whole batches are kept. With ``heads``,
        only the parts of the store they read are read (``FeatureDataset(..., heads=heads)``).
        """
        import torch
        from torch.utils.data import DataLoader, Subset

        from dinov2_heads.cache import FeatureDataset
        from dinov2_heads.cache.dataset import collate_features

        rows = self.train_rows if train else self.val_rows
        dataset: Any = FeatureDataset(self.store_of(train=train), label=label, heads=heads)
        if rows is not None:
            # Subset passes whole batches to FeatureDataset.__getitems__: one read per batch.
            dataset = Subset(dataset, rows.tolist())
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # Whole batches only: BatchNorm (in Conv1dNeck) cannot train on a batch of one.
            drop_last=train,
            collate_fn=collate_features,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def store_of(self, *, train: bool) -> FeatureStore:
        """The store the training (or validation) rows index."""
        return self.store if train or self.val_store is None else self.val_store

    def rows_of(self, *, train: bool) -> Tensor:
        """The training (or validation) rows of :meth:`store_of`."""
        import torch

        rows = self.train_rows if train else self.val_rows
        return rows if rows is not None else torch.arange(len(self.store_of(train=train)))

    @property
    def num_train(self) -> int:
        return int(self.train_rows.numel())

    @property
    def num_val(self) -> int:
        if self.val_rows is not None:
            return int(self.val_rows.numel())
        assert self.val_store is not None
        return len(self.val_store)


def split_rows(
    count: int, val_store: FeatureStore | None, fraction: float, seed: int
) -> tuple[Tensor, Tensor | None]:
    """Training and validation rows of the store: all and none when ``--val`` is given."""
    import torch

    if val_store is not None:
        return torch.arange(count), None
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(fraction * count))
    if held >= count:
        raise ValueError(
            f"the store has {count} samples: too few to hold out {fraction:.0%} for validation; "
            "pass a separate --val STORE or a smaller --val-fraction"
        )
    return order[held:].sort().values, order[:held].sort().values


def data_summary(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """The split, as ``results.json`` records it."""
    return {
        "num_train": job.num_train,
        "num_val": job.num_val,
        "validation": str(args.val) if args.val is not None else f"{args.val_fraction} of STORE",
        "seed": job.seed,
    }


def spec_settings(args: argparse.Namespace, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``epochs``, ``batch_size``, ``lr``, ``weight_decay``: the options, else the spec's, else
    :data:`DEFAULTS`."""
    return {
        key: getattr(args, key) if getattr(args, key, None) is not None else spec.get(key, default)
        for key, default in DEFAULTS.items()
    }


def fit_heads(
    heads: nn.Module,
    loader: DataLoader[Any],
    loss_fn: Callable[[Any, Any], Any],
    settings: Mapping[str, Any],
    *,
    progress: bool,
    batches: Callable[[Iterable[Any]], Iterable[Any]] = lambda read: read,
    stall_warning: float | None = STALL_WARNING,
) -> list[float]:
    """Train ``heads`` for ``settings["epochs"]`` passes: AdamW, a cosine schedule per step.

    The same steps as ``train_one_epoch(heads, loader, optimizer, loss_fn, scheduler=...)``
    in a loop with ``torch.optim.AdamW(heads.parameters(), lr=..., weight_decay=...)`` and
    ``CosineAnnealingLR(optimizer, T_max=epochs * len(loader))``, watched as it watches a
    ``DataLoader`` (stall warnings that count the loader's workers, ``WorkerDiedError``),
    also when ``batches`` wraps the loader.

    Args:
        heads: The heads to train (put in training mode).
        loader: The training batches.
        loss_fn: ``(outputs, labels) -> loss``.
        settings: ``epochs``, ``lr`` and ``weight_decay`` (see :func:`spec_settings`).
        progress: Show a progress bar per epoch.
        batches: Turns the loader's batches into the batches ``loss_fn`` expects.
        stall_warning: Seconds without a new batch before a warning, as
            ``train_one_epoch`` warns; ``None``: none.

    Returns:
        The mean loss of each epoch.
    """
    import torch

    from dinov2_heads.cache.loader_reading import read_and_stop
    from dinov2_heads.progress import Progress
    from dinov2_heads.training import train_one_epoch

    epochs = int(settings["epochs"])
    optimizer = torch.optim.AdamW(
        heads.parameters(), lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"])
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    heads.train()
    losses = []
    for epoch in range(epochs):
        size = len(loader) * (loader.batch_size or 1)
        with (
            Progress(size, f"epoch {epoch + 1}/{epochs}", enabled=progress) as bar,
            # Read here (its workers stopped however the epoch ends) and wrapped by batches;
            # loader= tells the training whose workers it waits for.
            contextlib.closing(read_and_stop(loader)) as read,
        ):
            loss, _ = train_one_epoch(
                heads,
                batches(read),
                optimizer,
                loss_fn,
                scheduler=scheduler,
                progress=bar,
                stall_warning=stall_warning,
                loader=loader,
            )
        logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, loss)
        losses.append(loss)
    heads.eval()
    return losses


def shorten(names: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` names, comma-separated, with ``...`` when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
