"""``extract_features``: run the frozen backbone once over a dataset and keep what heads need."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    default_collate,
)

from dinov2_heads import distributed
from dinov2_heads.cache.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TOKEN_ARRAYS,
    ArraySpec,
    FeatureStore,
    StoreMismatchError,
    StoreWriter,
    _label_array,
    backbone_description,
    describe_preprocessing,
    dtype_name,
    format_bytes,
    read_manifest,
)
from dinov2_heads.features import Features
from dinov2_heads.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["Keep", "estimate_store_size", "extract_features"]

#: Which tokens to store: ``"pooled"`` (class tokens of the n blocks and the mean patch token:
#: all that linear heads need), ``"patch_tokens"`` (also every patch token of the n blocks, for
#: heads such as ``Conv1dNeck``), ``"all"`` (also the register tokens when the backbone has
#: them), or a sequence of array names from ``TOKEN_ARRAYS``.
Keep = str | Sequence[str]

_STORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PRESETS = {
    "pooled": ("class_tokens", "patch_mean"),
    "patch_tokens": ("class_tokens", "patch_mean", "patch_tokens"),
    "all": TOKEN_ARRAYS,
}


def _resolve_keep(keep: Keep) -> tuple[tuple[str, ...], bool]:
    """The arrays to keep, and whether register tokens are optional (asked for by "all")."""
    if isinstance(keep, str):
        if keep not in _PRESETS:
            raise ValueError(
                f"keep={keep!r} is not a preset; use 'pooled', 'patch_tokens', 'all' or a list "
                f"of {list(TOKEN_ARRAYS)}"
            )
        return _PRESETS[keep], keep == "all"
    names = list(keep)
    unknown = [name for name in names if name not in TOKEN_ARRAYS]
    if unknown:
        raise ValueError(
            f"unknown token arrays {unknown} in keep; choose from {list(TOKEN_ARRAYS)}"
        )
    # Features cannot exist without class tokens and the mean patch token.
    chosen = {"class_tokens", "patch_mean", *names}
    return tuple(name for name in TOKEN_ARRAYS if name in chosen), False


def estimate_store_size(
    frozen: nn.Module,
    input_size: tuple[int, int],
    count: int,
    *,
    keep: Keep = "pooled",
    dtype: torch.dtype = torch.float16,
) -> int:
    """Bytes a store of ``count`` images will take, before extracting anything.

    Counts the token arrays, int64 sample ids and one int64 label per sample.

    Args:
        frozen: A :class:`~dinov2_heads.features.FrozenBackbone` (its ``embed_dim``,
            ``n_last_blocks``, ``patch_size`` and ``num_register_tokens`` are used).
        input_size: Image size (H, W).
        count: Number of images.
        keep: As for :func:`extract_features`.
        dtype: Storage dtype of the tokens.

    Example:
        ViT-S/14 (D = 384) at 224x224 keeps 1.5 KiB per image pooled, 193.5 KiB with patch
        tokens: 1.9 GB per 10,000 images.
    """
    names, _ = _resolve_keep(keep)
    dim = int(getattr(frozen, "embed_dim"))  # noqa: B009 - documented requirement
    n = int(getattr(frozen, "n_last_blocks", 1))
    patch = int(getattr(frozen, "patch_size", 14))
    registers = int(getattr(frozen, "num_register_tokens", 0) or 0)
    num_patches = (input_size[0] // patch) * (input_size[1] // patch)
    numel = {
        "class_tokens": n * dim,
        "patch_mean": dim,
        "patch_tokens": n * num_patches * dim,
        "register_tokens": registers * dim,
    }
    per_sample = sum(numel[name] for name in names) * dtype.itemsize + 8 + 8
    return count * per_sample


# ---------------------------------------------------------------------- batches


@dataclass
class _Batch:
    images: Tensor
    labels: Tensor | dict[str, Tensor] | None
    ids: Tensor | None


def _split_batch(batch: Any) -> _Batch:
    if isinstance(batch, Tensor):
        return _Batch(batch, None, None)
    if isinstance(batch, tuple | list) and 1 <= len(batch) <= 3:
        images = batch[0]
        if not isinstance(images, Tensor):
            raise TypeError(
                f"the first element of each batch must be an image tensor (B, 3, H, W), got "
                f"{type(images).__name__}"
            )
        size = images.shape[0]
        labels = _as_labels(batch[1], size) if len(batch) > 1 else None
        ids = None
        if len(batch) == 3:
            ids = torch.as_tensor(batch[2]).to(torch.int64).reshape(-1).cpu()
            if ids.shape[0] != size:
                raise ValueError(f"got {ids.shape[0]} sample ids for {size} images in a batch")
        return _Batch(images, labels, ids)
    raise TypeError(
        "each batch must be images (B, 3, H, W), (images, labels) or (images, labels, ids); "
        f"got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
    )


def _as_labels(value: Any, size: int) -> Tensor | dict[str, Tensor]:
    if isinstance(value, Mapping):
        return {str(key): _label_tensor(item, size, str(key)) for key, item in value.items()}
    return _label_tensor(value, size, "labels")


def _label_tensor(value: Any, size: int, name: str) -> Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{name}: labels must be ints, int tensors or float tensors, got "
            f"{type(value).__name__} ({error})"
        ) from None
    if tensor.ndim == 0 or tensor.shape[0] != size:
        raise ValueError(
            f"{name}: expected labels with a leading batch dimension of {size}, got shape "
            f"{tuple(tensor.shape)}"
        )
    if tensor.is_complex():
        raise TypeError(f"{name}: complex labels are not supported")
    if tensor.is_floating_point():
        return tensor.to(torch.float32).cpu()
    return tensor.to(torch.int64).cpu()


def _rows(
    features: Features, batch: _Batch, keep: Sequence[str], dtype: torch.dtype
) -> dict[str, Tensor]:
    rows = {
        "class_tokens": torch.stack(features.class_tokens, dim=1),  # n x (B, D) -> (B, n, D)
        "patch_mean": features.patch_mean,
    }
    if "patch_tokens" in keep:
        # n x (B, N, D) -> (B, n, N, D)
        rows["patch_tokens"] = torch.stack(features.require_patch_tokens("keep='patch_tokens'"), 1)
    if "register_tokens" in keep:
        assert features.register_tokens is not None
        rows["register_tokens"] = features.register_tokens
    out = {name: value.detach().to(device="cpu", dtype=dtype) for name, value in rows.items()}
    if isinstance(batch.labels, Tensor):
        out["labels"] = batch.labels
    elif isinstance(batch.labels, dict):
        for index, value in enumerate(batch.labels.values()):
            out[_label_array(index)] = value
    return out


def _check_finite(
    rows: Mapping[str, Tensor],
    features: Features,
    keep: Sequence[str],
    dtype: torch.dtype,
    positions: range,
) -> None:
    """Refuse NaN or inf tokens: every head trained on the store would inherit them."""
    for name in keep:
        stored = rows[name]
        finite = torch.isfinite(stored.reshape(stored.shape[0], -1)).all(dim=1)  # (B,)
        if bool(finite.all()):
            continue
        row = int((~finite).nonzero()[0])
        if dtype != torch.float32 and _finite_before_storage(features, name, row):
            cause = (
                f"its values exceed the {dtype_name(dtype)} range of the store; extract with "
                "dtype=torch.float32 (or torch.bfloat16)"
            )
        else:
            cause = (
                "the backbone gave NaN or inf for this image; check the image and its "
                "preprocessing (a NaN pixel, a division by a zero std) and the backbone weights"
            )
        raise ValueError(f"the {name} of sample {positions.start + row} are not finite: {cause}")


def _finite_before_storage(features: Features, name: str, row: int) -> bool:
    values = {
        "class_tokens": list(features.class_tokens),
        "patch_mean": [features.patch_mean],
        "patch_tokens": list(features.patch_tokens or ()),
        "register_tokens": [] if features.register_tokens is None else [features.register_tokens],
    }[name]
    return all(bool(torch.isfinite(value[row]).all()) for value in values)


def _layout(
    features: Features,
    batch: _Batch,
    keep: tuple[str, ...],
    registers_optional: bool,
    dtype: torch.dtype,
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The kept arrays and the manifest entries that the first batch determines."""
    if "register_tokens" in keep and features.register_tokens is None:
        if not registers_optional:
            raise ValueError(
                "keep asks for register tokens but the backbone gives none; use a _reg "
                "variant or leave register_tokens out of keep"
            )
        keep = tuple(name for name in keep if name != "register_tokens")
    if "patch_tokens" in keep:
        features.require_patch_tokens("keep='patch_tokens'")
    sample = _rows(features[:1], _Batch(batch.images[:1], _first(batch.labels), None), keep, dtype)
    arrays = {
        name: ArraySpec(f"{name}.bin", dtype_name(value.dtype), tuple(value.shape[1:])).to_json()
        for name, value in sample.items()
    }
    arrays["sample_ids"] = ArraySpec("sample_ids.bin", "int64", ()).to_json()
    labels: dict[str, Any] | None = None
    if isinstance(batch.labels, Tensor):
        labels = {"kind": "tensor"}
    elif isinstance(batch.labels, dict):
        labels = {"kind": "columns", "columns": list(batch.labels)}
    height, width = batch.images.shape[-2:]
    registers = features.register_tokens
    entries = {
        "input_size": [int(height), int(width)],
        "grid": list(features.grid),
        "embed_dim": features.embed_dim,
        "n_blocks": features.n_blocks,
        "num_register_tokens": (
            int(registers.shape[1]) if registers is not None and "register_tokens" in keep else 0
        ),
        "keep": list(keep),
        "labels": labels,
        "arrays": arrays,
    }
    return keep, entries


def _first(labels: Tensor | dict[str, Tensor] | None) -> Tensor | dict[str, Tensor] | None:
    if isinstance(labels, Tensor):
        return labels[:1]
    if isinstance(labels, dict):
        return {key: value[:1] for key, value in labels.items()}
    return None


# ---------------------------------------------------------------------- data sources


@dataclass
class _Source:
    """Where batches come from: a map-style dataset (shardable) or a stream of batches."""

    dataset: Dataset[Any] | None
    stream: Iterable[Any] | None
    count: int | None
    batch_size: int
    num_workers: int
    collate_fn: Any


def _source(data: Any, batch_size: int, num_workers: int) -> _Source:
    if isinstance(data, DataLoader):
        dataset = data.dataset
        sequential = isinstance(data.sampler, SequentialSampler)
        if not isinstance(dataset, IterableDataset) and data.batch_size is not None:
            if not sequential:
                raise ValueError(
                    "extract_features stores samples in data order, but this DataLoader "
                    "shuffles (its sampler is not sequential); pass shuffle=False or the "
                    "Dataset itself"
                )
            return _Source(
                dataset,
                None,
                len(dataset),  # type: ignore[arg-type]
                data.batch_size,
                data.num_workers,
                data.collate_fn,
            )
        count = None if isinstance(dataset, IterableDataset) else len(dataset)  # type: ignore[arg-type]
        return _Source(None, data, count, batch_size, 0, None)
    if isinstance(data, IterableDataset):
        loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        return _Source(None, loader, None, batch_size, num_workers, None)
    if isinstance(data, Dataset) or (
        hasattr(data, "__getitem__") and hasattr(data, "__len__") and not _holds_batches(data)
    ):
        return _Source(data, None, len(data), batch_size, num_workers, None)
    if isinstance(data, Iterable):
        return _Source(None, data, None, batch_size, 0, None)
    raise TypeError(
        f"data must be a Dataset, a DataLoader or an iterable of batches, got {type(data).__name__}"
    )


def _holds_batches(data: Any) -> bool:
    # A plain list is a list of samples (image (3, H, W)) or of batches (images (B, 3, H, W)).
    if len(data) == 0:
        return False
    first = data[0]
    images = first[0] if isinstance(first, tuple | list) and first else first
    return isinstance(images, Tensor) and images.ndim == 4


def _rounds(start: int, count: int, step: int) -> Iterator[tuple[int, int]]:
    lo = start
    while lo < count:
        hi = min(lo + step, count)
        yield lo, hi
        lo = hi


def _share(lo: int, hi: int, per_rank: int, rank: int) -> range:
    first = min(lo + rank * per_rank, hi)
    return range(first, min(first + per_rank, hi))


# ---------------------------------------------------------------------- extraction


def extract_features(
    frozen: nn.Module,
    data: Any,
    *,
    path: str | os.PathLike[str] | None = None,
    keep: Keep = "pooled",
    dtype: torch.dtype = torch.float16,
    batch_size: int = 64,
    num_workers: int = 0,
    preprocessing: Any = None,
    progress: bool = True,
    overwrite: bool = False,
) -> FeatureStore:
    """Run the frozen backbone once over ``data`` and store what heads need.

    With ``path``, the store is a directory of memory-mapped files (see
    :mod:`dinov2_heads.cache.store`) and extraction is resumable: after an interruption (an
    exception, Ctrl-C, a killed process), calling this again with the same arguments continues
    where it stopped, and the finished store holds every sample exactly once, in data order.
    Calling it on a finished store returns it without running the backbone. Without ``path``
    the features are kept in memory.

    Under ``torchrun`` (a process group of several processes), a map-style dataset is sharded:
    each round, each process runs one batch of consecutive samples, all write into the one
    store at their final positions, and rank 0 records the progress. Every process returns
    the whole store.

    The expected size is logged (INFO) before anything is written.

    Args:
        frozen: A :class:`~dinov2_heads.features.FrozenBackbone` (or a module that maps images
            (B, 3, H, W) to :class:`~dinov2_heads.features.Features`); its device is used.
        data: A map-style ``Dataset`` of ``image``, ``(image, label)`` or
            ``(image, label, id)`` items (labels may be ints, tensors or dicts of them: one
            column per key), a ``DataLoader`` over one with ``shuffle=False``, or any iterable
            of such batches (not resumable without re-reading, and single-process only).
        path: Store directory (created if needed), or ``None`` to keep it in memory.
        keep: ``"pooled"`` (class tokens + mean patch token), ``"patch_tokens"`` (also all
            patch tokens: large), ``"all"`` (also register tokens), or a list of array names.
        dtype: Storage dtype of the tokens (``float16`` halves the size of ``float32``;
            features are always returned as float32).
        batch_size: Images per backbone call (per process); a DataLoader's own batch size wins.
        num_workers: DataLoader workers for a ``Dataset``.
        preprocessing: A description of how images were prepared (a string, a mapping or a
            dataclass such as :class:`dinov2_heads.data.Preprocess`), recorded in the store
            and checked by :meth:`FeatureStore.open`.
        progress: Show a progress bar with images/s (tqdm, or log lines without it).
        overwrite: Delete an existing store at ``path`` and start again.

    Returns:
        The finished :class:`FeatureStore`.

    Raises:
        StoreMismatchError: If ``path`` holds a store made with other weights, another input
            size, other preprocessing or other settings; the message names both values.
        ValueError: If the features of a sample are NaN or inf (in float32, or once cast to
            ``dtype``); the samples before its batch stay in the store.
    """
    if dtype not in _STORE_DTYPES:
        raise ValueError(
            f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    keep_names, registers_optional = _resolve_keep(keep)
    source = _source(data, batch_size, num_workers)
    if source.count == 0:
        raise ValueError("the data holds no samples; nothing to extract")
    rank, world = distributed.rank(), distributed.world_size()
    if not distributed.is_distributed():
        rank, world = 0, 1
    if world > 1 and source.dataset is None:
        raise ValueError(
            "distributed extraction shards a map-style Dataset by index; pass the Dataset (or "
            "a DataLoader over it with shuffle=False) rather than an iterable of batches"
        )
    parameter = next(frozen.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": backbone_description(frozen),
        "preprocessing": describe_preprocessing(preprocessing),
        "dtype": dtype_name(dtype),
        "count": source.count,
    }
    root = Path(path) if path is not None else None
    existing: dict[str, Any] | None = None
    if root is not None:
        if rank == 0:
            _prepare_directory(root, overwrite)
        distributed.barrier()
        if (root / MANIFEST).is_file():
            existing = read_manifest(root)
            _check_header(root, existing, header)
            if existing["complete"] or existing["written"] == source.count:
                # No batch will run, so nothing would reach the layout check of the first
                # batch: check what is known without the backbone.
                _check_known_layout(root, existing, frozen, keep_names, registers_optional, source)
            if existing["complete"]:
                logger.info("feature store at %s is already complete; nothing to extract", root)
                return FeatureStore.open(root)
    start = int(existing["written"]) if existing is not None else 0
    if start:
        logger.info("resuming the feature store at %s from sample %d", root, start)
    run = _Run(
        frozen=frozen,
        device=device,
        root=root,
        header=header,
        existing=existing,
        keep=keep_names,
        registers_optional=registers_optional,
        dtype=dtype,
        rank=rank,
    )
    bar = Progress(
        source.count,
        "extracting features",
        enabled=progress and rank == 0,
        initial=start,
    )
    try:
        if source.dataset is not None:
            assert source.count is not None
            _extract_dataset(run, source, start, rank, world, bar)
            total = source.count
        else:
            assert source.stream is not None
            total = _extract_stream(run, source.stream, start, bar)
    finally:
        bar.close()
        if run.writer is not None:
            run.writer.close()
    return run.finish(total, world)


@dataclass
class _Run:
    frozen: nn.Module
    device: torch.device
    root: Path | None
    header: dict[str, Any]
    existing: dict[str, Any] | None
    keep: tuple[str, ...]
    registers_optional: bool
    dtype: torch.dtype
    rank: int
    manifest: dict[str, Any] | None = None
    writer: StoreWriter | None = None
    memory: list[tuple[int, dict[str, Tensor]]] | None = None

    def process(self, batch: Any, positions: range) -> None:
        """Run the backbone on one batch and write (or keep) its rows at ``positions``."""
        parts = _split_batch(batch)
        if parts.images.shape[0] != len(positions):
            raise ValueError(
                f"a batch holds {parts.images.shape[0]} images where {len(positions)} were "
                "expected; the data must yield every sample exactly once, in order"
            )
        with torch.no_grad():
            features = self.frozen(parts.images.to(self.device, non_blocking=True))
        if not isinstance(features, Features):
            raise TypeError(
                f"frozen must return Features, got {type(features).__name__}; wrap the "
                "backbone in FrozenBackbone"
            )
        if self.manifest is None:
            self._start(features, parts, positions)
        rows = _rows(features, parts, self.keep, self.dtype)
        _check_finite(rows, features, self.keep, self.dtype, positions)
        ids = parts.ids if parts.ids is not None else torch.arange(positions.start, positions.stop)
        rows["sample_ids"] = ids.to(torch.int64)
        if self.writer is not None:
            self.writer.write(positions.start, rows)
        else:
            assert self.memory is not None
            self.memory.append((positions.start, rows))

    def _start(self, features: Features, batch: _Batch, positions: range) -> None:
        self.keep, entries = _layout(
            features, batch, self.keep, self.registers_optional, self.dtype
        )
        manifest = {**self.header, **entries, "written": 0, "complete": False}
        if self.existing is not None:
            _check_layout(self.root, self.existing, manifest)
            manifest["written"] = self.existing["written"]
        count = self.header["count"]
        per_sample = sum(ArraySpec.from_json(s).row_bytes for s in manifest["arrays"].values())
        if self.rank == 0:
            if count is not None:
                logger.info(
                    "feature store %s: %d samples x %s = %s (%s, keep=%s)",
                    self.root or "in memory",
                    count,
                    format_bytes(per_sample),
                    format_bytes(count * per_sample),
                    dtype_name(self.dtype),
                    list(self.keep),
                )
            else:
                logger.info(
                    "feature store %s: %s per sample (%s, keep=%s); the sample count is unknown",
                    self.root or "in memory",
                    format_bytes(per_sample),
                    dtype_name(self.dtype),
                    list(self.keep),
                )
            if self.root is not None and count is not None:
                free = shutil.disk_usage(self.root).free
                if count * per_sample > free:
                    logger.warning(
                        "the feature store needs %s but only %s is free at %s",
                        format_bytes(count * per_sample),
                        format_bytes(free),
                        self.root,
                    )
        self.manifest = manifest
        if self.root is not None:
            self.writer = StoreWriter(self.root, manifest)
        else:
            self.memory = []

    def commit(self, written: int) -> None:
        """Flush this process's rows; rank 0 then records ``written`` (after a barrier)."""
        if self.root is None:
            return
        if self.writer is not None:
            self.writer.flush()
        # Every process takes part in the barrier, also one that had no batch this round.
        distributed.barrier()
        if self.rank == 0 and self.writer is not None:
            self.writer.commit(written)

    def finish(self, total: int, world: int) -> FeatureStore:
        if self.root is None:
            return self._finish_memory(total, world)
        distributed.barrier()
        if self.rank == 0:
            writer = self.writer
            if writer is None and self.existing is not None:
                # Nothing was left to extract: the last run stopped after its last rows.
                writer = StoreWriter(self.root, dict(self.existing))
            if writer is None:
                raise ValueError("the data yielded no samples; nothing to store")
            writer.commit(total, complete=True)
            writer.close()
            logger.info("feature store at %s is complete: %d samples", self.root, total)
        distributed.barrier()
        return FeatureStore.open(self.root)

    def _finish_memory(self, total: int, world: int) -> FeatureStore:
        parts = self.memory or []
        if world > 1:
            # Collectives: every process calls them, also one that had no batch at all.
            gathered = distributed.gather_objects(parts)
            parts = [item for chunk in gathered for item in chunk]
            manifests = distributed.gather_objects(self.manifest)
            self.manifest = next((m for m in manifests if m is not None), None)
        if self.manifest is None or not parts:
            raise ValueError("the data yielded no samples; nothing to store")
        parts.sort(key=lambda item: item[0])
        arrays = {
            name: torch.cat([rows[name] for _, rows in parts]) for name in self.manifest["arrays"]
        }
        manifest = {**self.manifest, "count": total, "written": total, "complete": True}
        return FeatureStore(manifest, arrays=arrays)


def _extract_dataset(
    run: _Run, source: _Source, start: int, rank: int, world: int, bar: Progress
) -> None:
    assert source.dataset is not None
    assert source.count is not None
    per_rank = source.batch_size
    rounds = list(_rounds(start, source.count, per_rank * world))
    mine = [list(_share(lo, hi, per_rank, rank)) for lo, hi in rounds]
    loader = DataLoader(
        source.dataset,
        batch_sampler=[indices for indices in mine if indices],
        num_workers=source.num_workers,
        collate_fn=source.collate_fn,
    )
    batches = iter(loader)
    for (lo, hi), indices in zip(rounds, mine, strict=True):
        if indices:
            run.process(next(batches), range(indices[0], indices[-1] + 1))
        run.commit(hi)
        bar.update(hi - lo)


def _extract_stream(run: _Run, stream: Iterable[Any], start: int, bar: Progress) -> int:
    position = 0
    for batch in stream:
        size = _batch_size(batch)
        lo, hi = position, position + size
        position = hi
        if hi <= start:
            continue  # already in the store (a resumed run re-reads, but does not recompute)
        if lo < start:
            batch = _slice_batch(batch, start - lo)
            lo = start
        run.process(batch, range(lo, hi))
        run.commit(hi)
        bar.update(hi - lo)
    if position < start:
        raise ValueError(
            f"the data yielded {position} samples but the store being resumed already holds "
            f"{start}; resume with the same data"
        )
    return position


def _batch_size(batch: Any) -> int:
    images = batch if isinstance(batch, Tensor) else batch[0] if batch else None
    if not isinstance(images, Tensor):
        return _split_batch(batch).images.shape[0]
    return int(images.shape[0])


def _slice_batch(batch: Any, offset: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[offset:]
    parts = []
    for item in batch:
        if isinstance(item, Mapping):
            parts.append({key: value[offset:] for key, value in item.items()})
        else:
            parts.append(item[offset:])
    return type(batch)(parts) if isinstance(batch, tuple) else parts


# ---------------------------------------------------------------------- checks


def _prepare_directory(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another store path")
    if overwrite and root.is_dir():
        if (root / MANIFEST).is_file() or _only_store_files(root):
            shutil.rmtree(root)
        else:
            raise ValueError(
                f"refusing to overwrite {root}: it is not a feature store (no {MANIFEST}) and "
                "holds other files"
            )
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MANIFEST).is_file() and not _only_store_files(root):
        raise ValueError(
            f"{root} is not empty and is not a feature store (no {MANIFEST}); choose an empty "
            "or new directory"
        )


def _only_store_files(root: Path) -> bool:
    # Files a run killed before its first commit leaves behind.
    return all(
        entry.is_file() and (entry.suffix == ".bin" or entry.name.startswith(f".{MANIFEST}."))
        for entry in root.iterdir()
    )


def _check_header(root: Path, stored: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    def mismatch(what: str, old: Any, new: Any) -> StoreMismatchError:
        return StoreMismatchError(
            f"the feature store at {root} was started with {what} {old}, but this run has "
            f"{new}; resume with the same settings, or pass overwrite=True (or a new path) to "
            "start again"
        )

    old_print = stored["backbone"]["fingerprint"]
    new_print = header["backbone"]["fingerprint"]
    if old_print != new_print:
        raise mismatch(
            "backbone fingerprint",
            f"{old_print} ({stored['backbone'].get('variant') or 'custom'})",
            f"{new_print} ({header['backbone'].get('variant') or 'custom'})",
        )
    if stored.get("preprocessing") != header["preprocessing"]:
        raise mismatch(
            "preprocessing",
            repr(stored.get("preprocessing")),
            repr(header["preprocessing"]),
        )
    if stored["dtype"] != header["dtype"]:
        raise mismatch("dtype", stored["dtype"], header["dtype"])
    old_count, new_count = stored.get("count"), header["count"]
    if old_count is not None and new_count is not None and old_count != new_count:
        raise mismatch("a dataset of", f"{stored['count']} samples", f"{header['count']}")


def _check_known_layout(
    root: Path,
    stored: Mapping[str, Any],
    frozen: nn.Module,
    keep: tuple[str, ...],
    registers_optional: bool,
    source: _Source,
) -> None:
    """Check n_blocks, keep and the input size against a store without running the backbone.

    n_blocks and the register count come from a ``FrozenBackbone``'s attributes, the input size
    from the first sample of a map-style dataset; whatever is unknown is left to the check of
    the first batch.
    """
    known: dict[str, Any] = {}
    n_blocks = getattr(frozen, "n_last_blocks", None)
    if isinstance(n_blocks, int):
        known["n_blocks"] = n_blocks
    registers = getattr(frozen, "num_register_tokens", None)
    if isinstance(registers, int):
        if registers_optional and registers == 0:
            keep = tuple(name for name in keep if name != "register_tokens")
        known["keep"] = list(keep)
    size = _first_image_size(source)
    if size is not None:
        known["input_size"] = list(size)
    _check_layout(root, stored, {**stored, **known})


def _first_image_size(source: _Source) -> tuple[int, int] | None:
    """(H, W) of the first image of a map-style dataset, when it is a plain image tensor."""
    if source.dataset is None or not source.count:
        return None
    if source.collate_fn not in (None, default_collate):
        return None  # a custom collate function may resize or otherwise change the images
    item = source.dataset[0]
    image = item[0] if isinstance(item, tuple | list) and item else item
    if not isinstance(image, Tensor) or image.ndim != 3:
        return None
    return int(image.shape[-2]), int(image.shape[-1])


def _check_layout(root: Path | None, stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    for key, what in (
        ("input_size", "input size (H, W)"),
        ("n_blocks", "n_blocks"),
        ("keep", "keep"),
        ("labels", "labels"),
        ("arrays", "arrays"),
    ):
        if stored.get(key) != new.get(key):
            raise StoreMismatchError(
                f"the feature store at {root} was started with {what} {stored.get(key)}, but "
                f"this run gives {new.get(key)}; resume with the same settings, or pass "
                "overwrite=True (or a new path) to start again"
            )
