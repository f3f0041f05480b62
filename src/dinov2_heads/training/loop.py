"""Training and evaluation loops that run the same on live images and on cached features."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dinov2_heads import distributed
from dinov2_heads.cache.dataset import FeatureDataset, collate_features
from dinov2_heads.features import Features
from dinov2_heads.heads.losses import LossOutput
from dinov2_heads.labels import check_class_labels
from dinov2_heads.progress import Progress
from dinov2_heads.training.grid import GridResult, GridResults, LinearProbeGrid
from dinov2_heads.training.watched_batches import watched_batches
from dinov2_heads.watchdog import STALL_WARNING, check_stall_warning

logger = logging.getLogger(__name__)

__all__ = [
    "FitHistory",
    "evaluate_grid",
    "features_of",
    "fit_grid",
    "split_batch",
    "train_one_epoch",
]


def features_of(
    inputs: Features | Tensor, frozen: nn.Module | None = None, device: torch.device | None = None
) -> Features:
    """The ``Features`` of a batch, whether it holds images or cached features.

    Args:
        inputs: Images (B, 3, H, W), run through ``frozen``; or ``Features`` (from a
            :class:`~dinov2_heads.cache.FeatureDataset`), used as they are.
        frozen: The :class:`~dinov2_heads.features.FrozenBackbone`, needed for images.
        device: Where the features should end up (by default where they are computed).
    """
    if isinstance(inputs, Features):
        return inputs.to(device) if device is not None else inputs
    if isinstance(inputs, Tensor):
        if frozen is None:
            raise ValueError(
                "the data yields images, so a backbone is needed: pass "
                "frozen=FrozenBackbone(backbone), or train from a FeatureDataset"
            )
        parameter = next(frozen.parameters(), None)
        images = inputs.to(parameter.device) if parameter is not None else inputs
        features = frozen(images)
        return features.to(device) if device is not None else features
    raise TypeError(
        f"expected images (B, 3, H, W) or Features, got {type(inputs).__name__}; the data "
        "must yield (images, labels) or (features, labels)"
    )


def split_batch(batch: Any, label: str | None = None) -> tuple[Features | Tensor, Tensor]:
    """(inputs, labels) of a training batch; ``label`` picks one column of dict labels."""
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise TypeError(
            "training needs labelled batches: (images, labels) or (features, labels), got "
            f"{type(batch).__name__}"
        )
    inputs, labels = batch[0], batch[1]
    if isinstance(labels, Mapping):
        if label is None or label not in labels:
            raise ValueError(
                f"the labels are columns {list(labels)}; choose one with label=..., e.g. "
                f"label={next(iter(labels))!r}"
            )
        labels = labels[label]
    elif label is not None:
        raise ValueError(f"label={label!r} was given but the labels are not columns (a dict)")
    return inputs, torch.as_tensor(labels)


@dataclass
class FitHistory:
    """What :func:`fit_grid` did: optimizer steps and the mean per-head loss of each epoch."""

    steps: int = 0
    epoch_loss: list[float] = field(default_factory=list)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: Optimizer,
    loss_fn: Callable[[Any, Any], Any],
    *,
    frozen: nn.Module | None = None,
    scheduler: LRScheduler | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    stall_warning: float | None = STALL_WARNING,
    loader: DataLoader[Any] | None = None,
) -> tuple[float, int]:
    """One pass over ``batches`` for any head: live images or cached features alike.

    One head with one label column, or several heads at once: a
    :class:`~dinov2_heads.heads.MultiHead` with dict labels and a
    :class:`~dinov2_heads.heads.MultiHeadLoss` (leave ``label`` unset), which trains every head
    from one pass over the data.

    Args:
        model: The head, :class:`~dinov2_heads.heads.MultiHead` or grid (or its
            DistributedDataParallel wrapper): Features -> logits (or a dict of logits).
        batches: A DataLoader of (images, labels) or (features, labels).
        optimizer: Steps after every batch.
        loss_fn: ``(logits, labels) -> loss``; a loss that returns its total with its parts
            (:class:`~dinov2_heads.heads.LossOutput` of ``MultiHeadLoss``, the
            ``DepthLossOutput`` of ``DepthLoss``) is reduced to its ``total``.
        frozen: The frozen backbone, when the batches hold images.
        scheduler: Stepped after every optimizer step (per-iteration schedule).
        label: The label column, for dict labels and a single head. ``None`` with dict labels
            hands the whole dict to ``loss_fn`` (several heads).
        progress: Counts the images.
        stall_warning: Seconds without a new batch before a warning (logged, the training
            goes on) that says whether it waits for the data or a step is still at work, and
            what to try; repeated at 2, 4, 8, ... times as long, as ``extract_features``
            warns. ``None``: no warning (no watchdog thread).
        loader: The ``DataLoader`` that ``batches`` wraps, when ``batches`` is a generator
            over one (relabelling its batches, say) rather than the loader itself: the
            warning counts its workers, and a dead worker's error names them and its batch
            size. The caller stops its workers (read it with
            :func:`~dinov2_heads.cache.loader_reading.read_and_stop`). Without it, batches
            that are not a ``DataLoader`` count as read in this process.

    Returns:
        (mean loss over the batches, number of steps).

    Raises:
        WorkerDiedError: A worker of a ``DataLoader`` was killed (``SIGKILL``: nearly always
            the out-of-memory killer), crashed or exited; the message names the likely cause
            and the fixes, as for an extraction.
        SharedMemoryError: A worker ran out of shared memory (``/dev/shm``) handing a batch
            over; the message says how large it is and what to change.
        ValueError: ``loader`` is given and ``batches`` is another ``DataLoader``.
    """
    stall_warning = check_stall_warning(stall_warning)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else None
    total = torch.zeros((), dtype=torch.float64)
    steps = 0
    reading = watched_batches(batches, loop="training", stall_warning=stall_warning, loader=loader)
    with reading as watched:
        for batch in watched:
            inputs, labels = _inputs_and_targets(batch, label)
            features = features_of(inputs, frozen, device)
            logits = model(features)
            loss = _total_loss(loss_fn(logits, _to(labels, _device_of(logits))))
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach().to("cpu", torch.float64)
            steps += 1
            if progress is not None:
                progress.update(features.batch_size)
    return (float(total) / steps if steps else float("nan")), steps


def _inputs_and_targets(batch: Any, label: str | None) -> tuple[Any, Tensor | dict[str, Tensor]]:
    # Dict labels without a chosen column go to the loss whole: one loss for several heads.
    whole = label is None and isinstance(batch, tuple | list) and len(batch) >= 2
    if whole and isinstance(batch[1], Mapping):
        return batch[0], {name: torch.as_tensor(v) for name, v in batch[1].items()}
    return split_batch(batch, label)


def _to(labels: Tensor | dict[str, Tensor], device: torch.device) -> Tensor | dict[str, Tensor]:
    if isinstance(labels, Tensor):
        return labels.to(device)
    return {name: value.to(device) for name, value in labels.items()}


def _device_of(logits: Any) -> torch.device:
    if isinstance(logits, Tensor):
        return logits.device
    if isinstance(logits, Mapping) and logits:
        return _device_of(next(iter(logits.values())))
    raise TypeError(
        f"the model must return logits (a tensor) or a dict of them, got {type(logits).__name__}"
    )


def _total_loss(loss: Any) -> Tensor:
    # MultiHeadLoss returns (total, per_head) and DepthLoss (total, sig, gradient), both named
    # tuples with a "total"; a plain loss is the scalar itself.
    is_parts = isinstance(loss, LossOutput) or (
        isinstance(loss, tuple) and isinstance(getattr(loss, "total", None), Tensor)
    )
    total = loss.total if is_parts else loss
    if not isinstance(total, Tensor) or total.ndim != 0:
        shape = tuple(total.shape) if isinstance(total, Tensor) else type(total).__name__
        raise TypeError(
            f"loss_fn must return a scalar tensor (or a named tuple with its total, such as "
            f"MultiHeadLoss's LossOutput), got {shape}; reduce it with .mean() or pass a loss "
            "with reduction='mean'"
        )
    return total


def _collate_for(dataset: Any) -> Callable[[Any], Any] | None:
    return collate_features if isinstance(dataset, FeatureDataset) else None


def _read_for(data: Any, grid: LinearProbeGrid) -> Any:
    """A ``FeatureDataset`` read for the grid alone (pooled tokens); anything else as it is."""
    return data.for_heads(grid) if isinstance(data, FeatureDataset) else data


def fit_grid(
    grid: LinearProbeGrid,
    data: Dataset[Any] | DataLoader[Any],
    *,
    epochs: int = 10,
    batch_size: int = 256,
    frozen: nn.Module | None = None,
    label: str | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    stall_warning: float | None = STALL_WARNING,
) -> FitHistory:
    """Train every head of ``grid`` with the official recipe.

    SGD with momentum 0.9, no weight decay, each head at ``lr * batch_size / 256`` annealed
    to 0 by a per-step cosine schedule, the sum of the heads' cross-entropies as the loss,
    incomplete last batches dropped. Under ``torchrun`` the grid is wrapped in
    ``DistributedDataParallel`` and each process takes ``batch_size / world_size`` samples of
    every global batch, so the run matches a single process with the same global batch.

    Args:
        grid: The grid (its device is used).
        data: A :class:`~dinov2_heads.cache.FeatureDataset` (cached features; only the
            class tokens and the mean patch token are read from it), a ``Dataset`` of
            (image, label) with ``frozen`` (live features), or a ``DataLoader`` of either
            (used as it is; its batch size is per process; build it on
            ``FeatureDataset(store, heads=grid)`` to read only what the grid needs).
        epochs: Passes over the data.
        batch_size: Global batch size (divisible by the number of processes).
        frozen: The :class:`~dinov2_heads.features.FrozenBackbone` for live images.
        label: The label column, for dict labels.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        seed: Seed of the shuffling (the same in every process).
        num_workers: DataLoader workers.
        progress: Show a progress bar per epoch (rank 0 only).
        stall_warning: Seconds without a new batch before a warning that says what is
            waited for and what to try (see :func:`train_one_epoch`); ``None``: none.

    Raises:
        WorkerDiedError: A ``DataLoader`` worker was killed, crashed or exited (see
            :func:`train_one_epoch`).
        SharedMemoryError: A worker ran out of shared memory handing a batch over.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    stall_warning = check_stall_warning(stall_warning)
    world = distributed.world_size() if distributed.is_distributed() else 1
    rank = distributed.rank() if world > 1 else 0
    sampler: DistributedSampler[Any] | None = None
    if isinstance(data, DataLoader):
        loader = data
        global_batch = int(data.batch_size or batch_size) * world
    else:
        dataset: Dataset[Any] = _read_for(data, grid)
        if batch_size % world:
            raise ValueError(
                f"batch_size {batch_size} is the global batch and must be divisible by the "
                f"{world} processes"
            )
        # One shuffled order for everyone; each process takes every world-th sample of it,
        # so a global batch holds the same samples whatever the number of processes. The tail
        # that does not divide evenly is dropped rather than padded with repeated samples.
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size // world,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            collate_fn=_collate_for(dataset),
        )
        global_batch = batch_size
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"no full batch of {global_batch} samples in the data; use a smaller batch_size"
        )
    model = distributed.wrap_ddp(grid)
    optimizer = grid.make_optimizer(global_batch, momentum=momentum, weight_decay=weight_decay)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch, eta_min=0)
    history = FitHistory()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        with Progress(
            steps_per_epoch * global_batch,
            f"epoch {epoch + 1}/{epochs}",
            enabled=progress and rank == 0,
        ) as bar:
            loss, steps = train_one_epoch(
                model,
                loader,
                optimizer,
                grid.loss if world == 1 else _global_mean_loss(grid.loss, world),
                frozen=frozen,
                scheduler=scheduler,
                label=label,
                progress=bar,
                stall_warning=stall_warning,
            )
        history.steps += steps
        history.epoch_loss.append(loss / len(grid))
        logger.info("epoch %d/%d: mean loss per head %.4f", epoch + 1, epochs, loss / len(grid))
    return history


def _global_mean_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor], world: int
) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss_fn`` rescaled so that DDP's gradient average is the mean over every process.

    Each process's loss is a mean over its own labelled samples (-100 marks the others), and
    DDP averages the gradients of those means. With missing labels the processes hold different
    counts, and a mean of means is not the mean over the global batch: rescaling each by its
    share of the labelled samples, times the number of processes, makes it so.
    """

    def rescaled(logits: Tensor, labels: Tensor) -> Tensor:
        known = (labels >= 0).sum()
        total = known.clone()
        dist.all_reduce(total)
        share = known.clamp(min=1).double() * world / total.clamp(min=1).double()
        return loss_fn(logits, labels) * share.to(logits.dtype)

    return rescaled


@torch.no_grad()
def evaluate_grid(
    grid: LinearProbeGrid,
    data: Any,
    *,
    frozen: nn.Module | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    label: str | None = None,
    progress: bool = False,
    stall_warning: float | None = STALL_WARNING,
) -> GridResults:
    """Top-1 accuracy and mean cross-entropy of every head of ``grid`` on ``data``.

    Samples with a negative label are not counted. Under ``torchrun`` each process evaluates
    its shard of a ``Dataset`` and the counts are summed, so every process gets the same table.
    The result is also kept in ``grid.last_results``, which ``grid.best()`` uses.

    Args:
        grid: The grid (its device is used); left in the train/eval mode it was in.
        data: A ``FeatureDataset`` (only the pooled tokens are read from it), a ``Dataset``
            of ``(image, label)`` (with ``frozen``), or a ``DataLoader`` / iterable of batches
            of either.
        frozen: The frozen backbone, when ``data`` yields images.
        batch_size: Batch size when ``data`` is a ``Dataset``.
        num_workers: DataLoader workers when ``data`` is a ``Dataset``.
        label: The label column, for dict labels (as for ``fit_grid``).
        progress: Show a progress bar (rank 0 only).
        stall_warning: Seconds without a new batch before a warning that says whether the
            evaluation waits for the ``DataLoader`` or is still at work on a batch, and what
            to try (as :func:`train_one_epoch` warns); ``None``: none.

    Raises:
        ValueError: No sample has a label.
        WorkerDiedError: A ``DataLoader`` worker was killed, crashed or exited (see
            :func:`train_one_epoch`).
        SharedMemoryError: A worker ran out of shared memory handing a batch over.
    """
    stall_warning = check_stall_warning(stall_warning)
    world = distributed.world_size() if distributed.is_distributed() else 1
    rank = distributed.rank() if world > 1 else 0
    batches = _evaluation_batches(_read_for(data, grid), batch_size, num_workers, rank, world)
    was_training = grid.training
    grid.eval()
    try:
        with (
            Progress(None, "evaluating", enabled=progress and rank == 0) as bar,
            watched_batches(batches, loop="evaluation", stall_warning=stall_warning) as watched,
        ):
            correct, loss_sum, count = _grid_scores(grid, watched, frozen, label, bar)
    finally:
        grid.train(was_training)
    if world > 1:
        parts = distributed.gather_objects((correct, loss_sum, count))
        correct = torch.stack([p[0] for p in parts]).sum(0)
        loss_sum = torch.stack([p[1] for p in parts]).sum(0)
        count = sum(p[2] for p in parts)
    if count == 0:
        raise ValueError("no labelled samples to evaluate on")
    results = GridResults(
        tuple(
            GridResult(
                index=index,
                spec=spec,
                accuracy=float(correct[index]) / count,
                loss=float(loss_sum[index]) / count,
                count=count,
            )
            for index, spec in enumerate(grid.specs)
        )
    )
    grid.last_results = results
    return results


def _evaluation_batches(
    data: Any, batch_size: int, num_workers: int, rank: int, world: int
) -> Iterable[Any]:
    """Batches of this process's shard of a map-style ``Dataset``; anything else as it is."""
    if not isinstance(data, Dataset) or isinstance(data, torch.utils.data.IterableDataset):
        return data
    shard = data
    if world > 1:
        shard = Subset(data, list(distributed.shard_range(len(data), rank, world)))  # type: ignore[arg-type]
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_for(data),
    )


def _grid_scores(
    grid: LinearProbeGrid,
    batches: Iterable[Any],
    frozen: nn.Module | None,
    label: str | None,
    bar: Progress,
) -> tuple[Tensor, Tensor, int]:
    """Per-head correct counts (G,), summed losses (G,) and the number of labelled samples."""
    device = next(grid.parameters()).device
    heads = len(grid)
    correct = torch.zeros(heads, dtype=torch.float64)
    loss_sum = torch.zeros(heads, dtype=torch.float64)
    count = 0
    for batch in batches:
        inputs, labels = split_batch(batch, label)
        logits = grid(features_of(inputs, frozen, device))  # (B, G, K)
        labels = check_class_labels(labels, grid.num_classes, negative_is_missing=True)
        labels = labels.to(logits.device)
        valid = labels >= 0
        bar.update(int(valid.shape[0]))
        logits, labels = logits[valid], labels[valid]
        if labels.numel() == 0:
            continue
        hits = logits.argmax(dim=-1) == labels[:, None]  # (B, G)
        # A diverged head (inf or NaN logits) is wrong, whatever argmax makes of NaN.
        hits &= torch.isfinite(logits).all(dim=-1)
        correct += hits.sum(dim=0).to("cpu", torch.float64)
        losses = F.cross_entropy(
            logits.transpose(1, 2), labels[:, None].expand(-1, heads), reduction="none"
        )  # (B, G)
        loss_sum += losses.sum(dim=0).to("cpu", torch.float64)
        count += int(labels.shape[0])
    return correct, loss_sum, count
