"""``extract_features``: run the frozen backbone once over a dataset and keep what heads need.

Three steps: the data becomes a source of batches (:mod:`~dinov2_heads.cache.source`), each
batch goes through the backbone and becomes checked rows (:mod:`~dinov2_heads.cache.layout`),
and a writer stores them (:mod:`~dinov2_heads.cache.writer`: resume, sharding, lock, commits).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinov2_heads import distributed
from dinov2_heads.cache.batches import Batch, batch_length, slice_batch, split_batch
from dinov2_heads.cache.layout import (
    Keep,
    batch_rows,
    chosen_blocks,
    format_bytes,
    plan_layout,
    resolve_keep,
    stored_blocks,
)
from dinov2_heads.cache.loader_settings import NumWorkers
from dinov2_heads.cache.manifest import (
    FORMAT_VERSION,
    BackboneInfo,
    Layout,
    Manifest,
    describe_preprocessing,
    dtype_name,
)
from dinov2_heads.cache.resume import check_layout
from dinov2_heads.cache.source import (
    MapSource,
    StreamSource,
    as_source,
    data_class_names,
    loader_failure,
)
from dinov2_heads.cache.stalls import stall_message
from dinov2_heads.cache.store import FeatureStore
from dinov2_heads.cache.writer import DiskWriter, MemoryWriter
from dinov2_heads.features import Features
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.progress import Progress
from dinov2_heads.watchdog import STALL_WARNING, StallWatchdog, check_stall_warning

logger = logging.getLogger(__name__)

__all__ = ["extract_features"]

_STORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

Writer = DiskWriter | MemoryWriter


def extract_features(
    frozen: nn.Module,
    data: Any,
    *,
    path: str | os.PathLike[str] | None = None,
    keep: Keep = "pooled",
    dtype: torch.dtype = torch.float16,
    batch_size: int = 64,
    num_workers: NumWorkers = "auto",
    preprocessing: Any = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    stall_warning: float | None = STALL_WARNING,
) -> FeatureStore:
    """Run the frozen backbone once over ``data`` and store what heads need.

    With ``path`` the store is a folder of memory-mapped files (:mod:`dinov2_heads.cache.store`),
    locked while written and resumable: after an interruption (an exception, Ctrl-C, a killed
    process, a full disk) the same call continues where it stopped, and the finished store holds
    every sample once, in data order; on a finished store it returns it without running the
    backbone. Without ``path`` the features stay in memory. Under ``torchrun`` a map-style
    dataset is sharded: each round every process runs one batch of consecutive samples into the
    one store, rank 0 records the progress, and every process returns the whole store. The
    expected size is logged (INFO) before anything is written.

    For dense heads, the store keeps the blocks the backbone was asked for: build it with
    ``FrozenBackbone.for_heads(backbone, head)`` (or ``FrozenBackbone(backbone, blocks=...)``)
    and the class and patch tokens of those blocks, normed or not as asked, are stored
    (``block_tokens``, in the storage ``dtype``) and come back in
    :attr:`Features.blocks <dinov2_heads.features.Features.blocks>` with the backbone's depth,
    so ``head(features)`` reads them as it does live. Segmentation masks (integer (H, W)
    labels) are stored as uint8 and depth maps (float (1, H, W) or (H, W) labels) as float16
    (float32 in a float32 or bfloat16 store), both at the image size. The cache holds one view
    of each image: train from it when there is no random augmentation.

    Images may be ``uint8`` pixels, from ``Preprocess(..., normalize=False)``: each batch then
    goes to the device (through pinned memory with a CUDA backbone) as ``uint8``, a quarter of
    the bytes of float32, and the ``FrozenBackbone`` normalises it there with its ``mean`` and
    ``std``. The features are the same (bit for bit on the CPU), and so is the recorded
    preprocessing, so a store started one way resumes the other way.

    Args:
        frozen: A :class:`~dinov2_heads.features.FrozenBackbone` (or a module that maps images
            (B, 3, H, W) to :class:`~dinov2_heads.features.Features`); its device is used.
        data: A map-style ``Dataset`` of ``image``, ``(image, label)`` or ``(image, label, id)``
            items (labels: ints, tensors or dicts of them, one column per key, stored by name;
            masks (H, W) and depth maps (1, H, W) of the image's size included), an
            ``IterableDataset`` of such items, a ``DataLoader`` over either (not shuffling),
            or an image tensor (N, 3, H, W). Every image must have the same size.
        path: Store directory (created if needed), or ``None`` to keep it in memory.
        keep: ``"pooled"`` (class tokens + mean patch token), ``"patch_tokens"`` (also all
            patch tokens: large), ``"all"`` (also register tokens), or a list of array names.
        dtype: Storage dtype of the tokens (read back as float32).
        batch_size: Images per backbone call (per process); a DataLoader's own batch size wins.
        num_workers: DataLoader worker processes for a ``Dataset``. ``"auto"``: for a dataset
            that reads image files (``ImageFolderDataset``, ``ManifestDataset``), one per CPU
            available but one (at most 16), with batches in pinned memory for a CUDA backbone;
            none for other datasets, whose state workers would not share (pass a number).
            Workers hand batches over through shared memory (``/dev/shm`` on Linux): where
            their batches in flight would not fit, ``"auto"`` starts fewer (down to none) and
            an explicit count is kept; either way a warning says how much there is and the
            fix. A ``DataLoader``'s own settings win (checked the same way, never changed).
        preprocessing: How images were prepared (a string, a mapping or a dataclass such as
            :class:`dinov2_heads.data.Preprocess`), recorded and checked by ``open``.
        class_names: ``{label name: class names}``; by default the data's ``vocabularies``
            (``ImageFolderDataset``, ``ManifestDataset``). One label tensor takes the name of
            the only vocabulary (``"label"`` without one). See ``store.class_names``.
        progress: Show a progress bar with images/s (tqdm, or log lines without it) and the
            share of the time spent waiting for data: ``loader-bound`` when the backbone waited
            more than 10% of the time, else ``backbone-bound``.
        overwrite: Delete the store at ``path`` first: only a folder that holds nothing but a
            store's own files; anything else is refused.
        stall_warning: Seconds without a new batch before a warning (logged, the extraction
            goes on) that says how long it has waited, whether it waits for the
            ``DataLoader`` or the backbone is still at work, the line it is at when the data
            is read in this process, and what to try; repeated at 2, 4, 8, ... times as
            long. ``None``: no warning. A thread of its own watches, and ends with the
            extraction; results do not change.

    Raises:
        TypeError: If ``data`` is not a Dataset, a DataLoader or an image tensor.
        StoreMismatchError: If ``path`` holds a store made with other weights, input size,
            preprocessing or settings (naming both values), or a batch has another image size.
        StoreLockedError: If another process is writing the store at ``path``.
        SharedMemoryError: If a ``DataLoader`` worker ran out of shared memory (``/dev/shm``)
            handing a batch over; the message says how large it is and what to change. The
            batches before stay in the store.
        WorkerDiedError: If a ``DataLoader`` worker was killed (``SIGKILL``: nearly always
            the out-of-memory killer), crashed or exited; the message names the likely cause
            and the fixes (fewer workers, smaller batches). The batches before stay in the
            store.
        ValueError: If features are NaN or inf (in float32 or once cast to ``dtype``), a
            batch's labels differ from the first's (columns, floats after ints), a mask has
            another size than its image or values outside 0..255, a depth map overflows
            float16, or the samples of one batch differ in size (naming them); the batches
            before stay in the store.

    An error the dataset raises is raised as it was, also from a worker process, with a note
    that names the sample (for an ``IterableDataset``: the item's position in the stream, or
    the worker and the item's position in that worker's share).
    """
    keep_names, registers_optional = _check_arguments(keep, dtype, batch_size)
    stall_warning = check_stall_warning(stall_warning)
    parameter = next(frozen.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    source = as_source(data, batch_size, num_workers, device=device)
    if source.count == 0:
        raise ValueError("the data holds no samples; nothing to extract")
    if (
        isinstance(source, StreamSource)
        and distributed.is_distributed()
        and distributed.world_size() > 1
    ):
        raise ValueError(
            "distributed extraction shards a map-style Dataset by index; pass the Dataset "
            "(or a DataLoader over it with shuffle=False) rather than an iterable of batches"
        )
    encoder = _Encoder(
        frozen,
        keep=keep_names,
        registers_optional=registers_optional,
        dtype=dtype,
        class_names=dict(class_names) if class_names is not None else data_class_names(data),
        names_given=class_names is not None,
    )
    header = _header(frozen, preprocessing, dtype, source.count)
    if path is None:
        return _extract(encoder, source, MemoryWriter(header), progress, stall_warning)
    writer = DiskWriter(Path(path), header, overwrite=overwrite)
    try:
        if writer.layout is not None and (writer.complete or writer.start == source.count):
            # No batch will run, so nothing reaches the check of the first batch: check what
            # is known without the backbone.
            encoder.check_known(writer.layout, source, writer.root)
            if writer.complete:
                logger.info("feature store at %s is already complete; nothing to extract", path)
                return FeatureStore.open(writer.root)
        return _extract(encoder, source, writer, progress, stall_warning)
    finally:
        writer.close()


def _check_arguments(
    keep: Keep, dtype: torch.dtype, batch_size: int
) -> tuple[tuple[str, ...], bool]:
    if dtype not in _STORE_DTYPES:
        raise ValueError(
            f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return resolve_keep(keep)


def _header(
    frozen: nn.Module, preprocessing: Any, dtype: torch.dtype, count: int | None
) -> Manifest:
    """The manifest of a new store: what this run is, before any sample."""
    # A FrozenBackbone is described by the backbone it wraps (same state dict, same fingerprint).
    inner = getattr(frozen, "backbone", frozen)
    config = getattr(inner, "config", None)
    to_dict = getattr(config, "to_dict", None)
    weights = next((p.dtype for p in inner.parameters() if p.is_floating_point()), torch.float32)
    backbone = BackboneInfo(
        variant=getattr(inner, "variant", None),
        config=to_dict() if callable(to_dict) else None,
        fingerprint=weights_fingerprint(inner),
        weights_dtype=dtype_name(weights),
    )
    return Manifest(
        version=FORMAT_VERSION,
        backbone=backbone,
        preprocessing=describe_preprocessing(preprocessing),
        dtype=dtype_name(dtype),
        count=count,
        written=0,
        complete=False,
        layout=None,
    )


# ---------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class _Step:
    """One round: this process's batch (if any) at ``positions``, and samples done after it."""

    batch: Any
    positions: range
    done: int


def _extract(
    encoder: _Encoder,
    source: MapSource | StreamSource,
    writer: Writer,
    progress: bool,
    stall_warning: float | None,
) -> FeatureStore:
    """Source -> batches -> writer -> the finished store, with a watchdog for stalls."""
    bar = Progress(
        source.count,
        "extracting features",
        enabled=progress and writer.rank == 0,
        initial=writer.start,
    )
    steps = (
        _map_steps(source, writer)
        if isinstance(source, MapSource)
        else _stream_steps(source, writer.start)
    )
    done = writer.start
    watchdog = StallWatchdog(
        stall_warning,
        functools.partial(stall_message, workers=source.num_workers),
        item="batch",
    )
    try:
        with watchdog:
            for step in bar.timed(watchdog.watch(steps)):
                if step.batch is not None:
                    rows = encoder.rows(step.batch, step.positions, writer)
                    writer.write(step.positions.start, rows)
                writer.commit(step.done)
                bar.update(step.done - done)
                done = step.done
    except (RuntimeError, OSError) as error:
        # A worker out of shared memory, or killed: torch's SIGCHLD handler raises wherever
        # the main process is (reading the next batch or running the backbone), so the
        # whole loop.
        failure = loader_failure(error, source)
        if failure is None:
            raise
        raise failure from error
    finally:
        steps.close()  # stops the DataLoader's workers now, whatever stopped the loop
        bar.close()
    return writer.finish(done if source.count is None else source.count)


def _map_steps(source: MapSource, writer: Writer) -> Generator[_Step, None, None]:
    """Rounds from the resume point; this process reads only its own share of each."""
    rounds = list(writer.rounds(source.count, source.batch_size))
    batches = source.batches([list(r.mine) for r in rounds if r.mine])
    try:
        for step in rounds:
            yield _Step(next(batches) if step.mine else None, step.mine, step.hi)
    finally:
        batches.close()


def _stream_steps(source: StreamSource, start: int) -> Generator[_Step, None, None]:
    """Batches in order; those before ``start`` are read again but not recomputed."""
    position = 0
    batches = source.batches()
    try:
        for batch in batches:
            lo, hi = position, position + batch_length(batch)
            position = hi
            if hi <= start:
                continue
            if lo < start:
                batch, lo = slice_batch(batch, start - lo), start
            yield _Step(batch, range(lo, hi), hi)
    finally:
        batches.close()
    if position < start:
        raise ValueError(
            f"the data yielded {position} samples but the store being resumed already holds "
            f"{start}; resume with the same data"
        )


class _Encoder:
    """Runs the backbone on a batch and turns it into checked rows; the first fixes the layout."""

    def __init__(
        self,
        frozen: nn.Module,
        *,
        keep: tuple[str, ...],
        registers_optional: bool,
        dtype: torch.dtype,
        class_names: dict[str, tuple[str, ...]] | dict[str, Sequence[str]],
        names_given: bool,
    ) -> None:
        self.frozen = frozen
        self.keep = keep
        self.registers_optional = registers_optional
        self.dtype = dtype
        self.class_names = class_names
        self.names_given = names_given
        # The blocks the backbone was asked for (FrozenBackbone.blocks), kept with their tokens.
        self.blocks = chosen_blocks(getattr(frozen, "blocks", ()))
        parameter = next(frozen.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.layout: Layout | None = None

    def rows(self, raw: Any, positions: range, writer: Writer) -> dict[str, torch.Tensor]:
        """The rows of every array for the batch ``raw`` at ``positions``."""
        batch = split_batch(raw)
        if batch.size != len(positions):
            raise ValueError(
                f"a batch holds {batch.size} images where {len(positions)} were expected; the "
                "data must yield every sample exactly once, in order"
            )
        features = self._features(batch)
        if self.layout is None:
            planned = plan_layout(
                features,
                batch,
                keep=self.keep,
                registers_optional=self.registers_optional,
                dtype=self.dtype,
                class_names=self.class_names,
                names_given=self.names_given,
                blocks=self.blocks,
            )
            self.layout = writer.begin(planned)
            if writer.rank == 0:
                _log_size(self.layout, writer, self.dtype)
                _warn_without_dense_tokens(self.layout)
        rows = batch_rows(features, batch, self.layout, positions)
        ids = batch.ids if batch.ids is not None else torch.arange(positions.start, positions.stop)
        rows["sample_ids"] = ids.to(torch.int64)
        return rows

    def _features(self, batch: Batch) -> Features:
        with torch.no_grad():
            features = self.frozen(batch.images.to(self.device, non_blocking=True))
        if not isinstance(features, Features):
            raise TypeError(
                f"frozen must return Features, got {type(features).__name__}; wrap the "
                "backbone in FrozenBackbone"
            )
        return features

    def check_known(self, stored: Layout, source: MapSource | StreamSource, root: Path) -> None:
        """Check n_blocks, keep, blocks and the input size against a store, without the backbone.

        n_blocks, the depth, the chosen blocks and the register count come from a
        ``FrozenBackbone``'s attributes, the input size from the first sample of a map-style
        dataset; whatever is unknown passes.
        """
        known: dict[str, Any] = {}
        n_blocks = getattr(self.frozen, "n_last_blocks", None)
        if isinstance(n_blocks, int):
            known["n_blocks"] = n_blocks
        depth = getattr(self.frozen, "depth", None)
        depth = depth if isinstance(depth, int) else None
        if depth is not None:
            known["depth"] = depth
        keep = self.keep
        registers = getattr(self.frozen, "num_register_tokens", None)
        if isinstance(registers, int):
            if self.registers_optional and registers == 0:
                keep = tuple(name for name in keep if name != "register_tokens")
            known["keep"] = keep
        if isinstance(n_blocks, int) and isinstance(getattr(self.frozen, "blocks", None), tuple):
            known["blocks"] = stored_blocks(self.blocks, depth=depth, n_blocks=n_blocks, keep=keep)
        size = source.first_image_size() if isinstance(source, MapSource) else None
        if size is not None:
            known["input_size"] = size
        check_layout(root, stored, _replace_layout(stored, known))


def _replace_layout(layout: Layout, known: Mapping[str, Any]) -> Layout:
    return dataclasses.replace(layout.without_checksums(), **known)


def _log_size(layout: Layout, writer: Writer, dtype: torch.dtype) -> None:
    count = writer.manifest.count
    root = getattr(writer, "root", None)
    per_sample = layout.row_bytes
    where = root or "in memory"
    settings = f"{dtype_name(dtype)}, keep={list(layout.keep)}"
    if layout.blocks:
        settings += f", blocks={list(layout.blocks)}"
    arrays = ", ".join(
        f"{name} {_describe_array(spec.dtype, spec.shape)} {format_bytes(spec.row_bytes)}"
        for name, spec in layout.arrays.items()
    )
    if count is None:
        logger.info(
            "feature store %s: %s per sample (%s; %s); the sample count is unknown",
            where,
            format_bytes(per_sample),
            settings,
            arrays,
        )
        return
    logger.info(
        "feature store %s: %d samples x %s = %s (%s; per sample %s)",
        where,
        count,
        format_bytes(per_sample),
        format_bytes(count * per_sample),
        settings,
        arrays,
    )
    if root is not None:
        free = shutil.disk_usage(root).free
        if count * per_sample > free:
            logger.warning(
                "the feature store needs %s but only %s is free at %s",
                format_bytes(count * per_sample),
                format_bytes(free),
                root,
            )


def _describe_array(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]" if shape else dtype


def _warn_without_dense_tokens(layout: Layout) -> None:
    """Masks or depth maps next to pooled tokens only: no dense head can train on that."""
    columns = layout.labels.columns if layout.labels is not None else ()
    dense = [
        column.name
        for column in columns
        if tuple(layout.arrays[column.array].shape[-2:]) == layout.input_size
    ]
    if dense and "patch_tokens" not in layout.keep and not layout.blocks:
        logger.warning(
            "the labels %s are masks or depth maps but the store keeps no patch tokens, so "
            "no dense head can train from it; extract with "
            "FrozenBackbone.for_heads(backbone, head) (or keep='patch_tokens')",
            dense,
        )
