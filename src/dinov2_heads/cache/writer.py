"""Writers of a store: on disk (locked, resumable, sharded) or in memory.

Both answer the same calls, in this order: :meth:`~DiskWriter.rounds` (which samples this
process extracts: resume and sharding), :meth:`~DiskWriter.begin` (the layout of the first
batch), :meth:`~DiskWriter.write` and :meth:`~DiskWriter.commit` per round, then
:meth:`~DiskWriter.finish` and :meth:`~DiskWriter.close`.

On disk, rows are written at their final offsets and the manifest is replaced atomically
after the data is flushed, so its ``written`` count is always a prefix of rows that are really
on disk: a killed extraction resumes from there. Under ``torchrun`` every process writes its
own rows of the one store; rank 0 holds the lock and records the progress.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dinov2_heads import distributed
from dinov2_heads.cache.directory import prepare_directory
from dinov2_heads.cache.files import file_sha256, pwrite_all, rows_on_disk
from dinov2_heads.cache.lock import StoreLock
from dinov2_heads.cache.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    ArraySpec,
    Layout,
    Manifest,
    parse_dtype,
    read_manifest,
    write_manifest,
)
from dinov2_heads.cache.resume import check_header, check_layout, rows_to_keep
from dinov2_heads.cache.store import FeatureStore
from dinov2_heads.fingerprint import tensor_bytes

logger = logging.getLogger(__name__)

__all__ = ["DiskWriter", "MemoryWriter", "Round"]


@dataclass(frozen=True)
class Round:
    """Samples ``lo .. hi - 1``, extracted together by all processes; ``mine`` are this one's."""

    lo: int
    hi: int
    mine: range


class _Sharded:
    """Resume point and sharding, shared by both writers."""

    start: int

    def __init__(self) -> None:
        self.rank, self.world = 0, 1
        if distributed.is_distributed():
            self.rank, self.world = distributed.rank(), distributed.world_size()

    def rounds(self, count: int, batch_size: int) -> Iterator[Round]:
        """The rounds left, from the resume point: each process runs one batch per round."""
        lo = self.start
        while lo < count:
            hi = min(lo + batch_size * self.world, count)
            first = min(lo + self.rank * batch_size, hi)
            yield Round(lo, hi, range(first, min(first + batch_size, hi)))
            lo = hi


class DiskWriter(_Sharded):
    """Writes the store at ``root``: locked, resumed where it stopped, repaired when cut.

    Args:
        root: The store directory.
        header: The manifest of a new store (no layout, nothing written), made from this run's
            backbone, preprocessing, dtype and count.
        overwrite: Delete the store first (only what a store wrote; see
            :func:`~dinov2_heads.cache.remove_store`).

    Raises:
        StoreMismatchError: If the store was started with other settings.
        StoreLockedError: If another process is writing it.
    """

    def __init__(self, root: Path, header: Manifest, *, overwrite: bool) -> None:
        super().__init__()
        self.root = root
        self._lock: StoreLock | None = None
        self._fds: dict[str, int] = {}
        self.manifest = self._open(header, overwrite)
        self.start = self.manifest.written

    @property
    def layout(self) -> Layout | None:
        """The layout recorded so far (``None`` before the first batch of a new store)."""
        return self.manifest.layout

    @property
    def complete(self) -> bool:
        """Whether the store was already complete."""
        return self.manifest.complete

    def _open(self, header: Manifest, overwrite: bool) -> Manifest:
        error: BaseException | None = None
        manifest: Manifest | None = None
        if self.rank == 0:
            try:
                manifest = self._open_here(header, overwrite)
            except BaseException as caught:
                error = caught
        # Also the barrier before the other processes read the manifest.
        failures = distributed.gather_objects(None if error is None else str(error))
        if error is not None:
            self.close()
            raise error
        if failures[0] is not None:
            raise RuntimeError(f"rank 0 could not open the feature store: {failures[0]}")
        return manifest if manifest is not None else read_manifest(self.root)

    def _open_here(self, header: Manifest, overwrite: bool) -> Manifest:
        self._lock = prepare_directory(self.root, overwrite=overwrite)
        if not (self.root / MANIFEST).is_file():
            # Written before any data file: a folder with data files always has a manifest.
            write_manifest(self.root, header)
            return header
        stored = read_manifest(self.root)
        check_header(self.root, stored, header)
        keep = rows_to_keep(self.root, stored)
        if keep < stored.written or (stored.complete and not self._exact_sizes(stored)):
            assert stored.layout is not None
            stored = dataclasses.replace(
                stored,
                version=FORMAT_VERSION,
                written=keep,
                complete=False,
                layout=stored.layout.without_checksums(),
            )
            write_manifest(self.root, stored)
        return stored

    def _exact_sizes(self, manifest: Manifest) -> bool:
        assert manifest.layout is not None
        return all(
            not spec.row_bytes
            or (self.root / spec.file).stat().st_size == manifest.written * spec.row_bytes
            for spec in manifest.layout.arrays.values()
        )

    def begin(self, planned: Layout) -> Layout:
        """Fix the layout from the first batch (checked against a resumed store's)."""
        stored = self.manifest.layout
        layout = planned if stored is None else check_layout(self.root, stored, planned)
        if layout != stored:
            self.manifest = dataclasses.replace(
                self.manifest, layout=layout, version=FORMAT_VERSION
            )
            if self.rank == 0:
                write_manifest(self.root, self.manifest)  # names the data files before they exist
        return layout

    def write(self, start: int, rows: Mapping[str, Tensor]) -> None:
        """Write ``rows`` (each (B, ...)) as samples ``start .. start + B - 1``."""
        assert self.manifest.layout is not None, "begin() comes first"
        for name, spec in self.manifest.layout.arrays.items():
            tensor = _checked_rows(name, rows[name], spec)
            pwrite_all(self._fd(spec), tensor_bytes(tensor), start * spec.row_bytes)

    def commit(self, written: int) -> None:
        """Flush this process's rows; rank 0 then records ``written`` (after a barrier)."""
        for fd in self._fds.values():
            os.fsync(fd)
        # Every process takes part in the barrier, also one that had no batch this round.
        distributed.barrier()
        if self.rank == 0 and self.manifest.layout is not None:
            self.manifest = dataclasses.replace(self.manifest, written=written)
            write_manifest(self.root, self.manifest)

    def finish(self, total: int) -> FeatureStore:
        """Cut the files to ``total`` rows, record their checksums, mark the store complete."""
        distributed.barrier()
        if self.rank == 0:
            self._complete(total)
        distributed.barrier()
        self.close()
        return FeatureStore.open(self.root)

    def _complete(self, total: int) -> None:
        layout = self.manifest.layout
        if layout is None:
            raise ValueError("the data yielded no samples; nothing to store")
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        arrays: dict[str, ArraySpec] = {}
        for name, spec in layout.arrays.items():
            path = self.root / spec.file
            if rows_on_disk(self.root, spec) < total:
                raise AssertionError(f"{path} lacks rows of a store being completed")
            with open(path, "ab") as file:
                file.truncate(total * spec.row_bytes)
                file.flush()
                os.fsync(file.fileno())
            arrays[name] = dataclasses.replace(spec, sha256=file_sha256(path))
        self.manifest = dataclasses.replace(
            self.manifest,
            count=total,
            written=total,
            complete=True,
            layout=dataclasses.replace(layout, arrays=arrays),
        )
        write_manifest(self.root, self.manifest)
        logger.info("feature store at %s is complete: %d samples", self.root, total)

    def close(self) -> None:
        """Close the files and release the lock (a second call does nothing)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _fd(self, spec: ArraySpec) -> int:
        if spec.file not in self._fds:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
            self._fds[spec.file] = os.open(self.root / spec.file, flags, 0o644)
        return self._fds[spec.file]


class MemoryWriter(_Sharded):
    """Keeps the rows in memory; :meth:`finish` joins them (from every process) into a store."""

    def __init__(self, header: Manifest) -> None:
        super().__init__()
        self.manifest = header
        self.start = 0
        self.complete = False
        self._parts: list[tuple[int, dict[str, Tensor]]] = []

    @property
    def layout(self) -> Layout | None:
        """The layout of the first batch, ``None`` before it."""
        return self.manifest.layout

    def begin(self, planned: Layout) -> Layout:
        """Fix the layout from the first batch."""
        self.manifest = dataclasses.replace(self.manifest, layout=planned)
        return planned

    def write(self, start: int, rows: Mapping[str, Tensor]) -> None:
        """Keep ``rows`` as samples ``start .. start + B - 1``."""
        assert self.manifest.layout is not None, "begin() comes first"
        arrays = self.manifest.layout.arrays
        self._parts.append(
            (start, {name: _checked_rows(name, rows[name], spec) for name, spec in arrays.items()})
        )

    def commit(self, written: int) -> None:
        """Nothing to make durable in memory."""

    def finish(self, total: int) -> FeatureStore:
        """The store of every process's rows, in order."""
        parts, layout = self._parts, self.manifest.layout
        if self.world > 1:
            # Collectives: every process calls them, also one that had no batch at all.
            parts = [item for chunk in distributed.gather_objects(parts) for item in chunk]
            layouts: Iterable[Layout | None] = distributed.gather_objects(layout)
            layout = next((item for item in layouts if item is not None), None)
        if layout is None or not parts:
            raise ValueError("the data yielded no samples; nothing to store")
        parts.sort(key=lambda item: item[0])
        arrays = {name: torch.cat([rows[name] for _, rows in parts]) for name in layout.arrays}
        manifest = dataclasses.replace(
            self.manifest, layout=layout, count=total, written=total, complete=True
        )
        return FeatureStore(manifest, arrays=arrays)

    def close(self) -> None:
        """Nothing to release in memory."""


def _checked_rows(name: str, tensor: Tensor, spec: ArraySpec) -> Tensor:
    if tuple(tensor.shape[1:]) != spec.shape:
        raise ValueError(
            f"{name}: a batch has per-sample shape {tuple(tensor.shape[1:])} but the store "
            f"holds {spec.shape}; every sample must have the same shape"
        )
    return tensor.to(parse_dtype(spec.dtype))
