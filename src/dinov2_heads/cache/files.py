"""A store's data files: sizes checked against the manifest, memory maps, writes, checksums.

Each array is one raw file (little-endian, C order, no header) of ``rows x row_bytes`` bytes.
Reading maps it; a mapped file that shrinks under the map would kill the reader with SIGBUS
on the next access to the lost pages, so every read first checks (one ``stat`` per file) that
the file still holds the rows it needs and is still the file that was mapped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dinov2_heads.cache.errors import DamagedStoreError
from dinov2_heads.cache.manifest import ArraySpec, parse_dtype

__all__ = ["MappedFile", "check_size", "file_sha256", "pwrite_all", "rows_on_disk"]

_CHUNK = 1 << 22


def rows_on_disk(root: Path, spec: ArraySpec) -> int:
    """How many whole rows the file of ``spec`` holds (0 when it is missing)."""
    if spec.row_bytes == 0:
        return 2**62  # an empty per-sample shape: any number of rows fits in no bytes
    try:
        size = (root / spec.file).stat().st_size
    except FileNotFoundError:
        return 0
    return size // spec.row_bytes


def check_size(root: Path, spec: ArraySpec, rows: int, *, exact: bool) -> None:
    """Raise :class:`DamagedStoreError` unless the file holds ``rows`` rows (exactly, if asked)."""
    file = root / spec.file
    needed = rows * spec.row_bytes
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        if needed == 0:
            return
        raise DamagedStoreError(
            f"{file} is missing: the manifest records {rows} samples of {spec.row_bytes} bytes "
            "in it; run extract_features again with the same arguments to extract them again"
        ) from None
    if size < needed or (exact and size != needed):
        raise DamagedStoreError(
            f"{file} holds {size} bytes but the manifest records {rows} samples of shape "
            f"{list(spec.shape)} {spec.dtype} ({needed} bytes): the file was cut, replaced or "
            "the manifest edited; run extract_features again with the same arguments to "
            "repair it, or extract the store again"
        )


@dataclass
class MappedFile:
    """One array's file mapped read-only (copy-on-write) with the identity it had when mapped.

    Attributes:
        path: The file.
        spec: Its dtype and per-sample shape.
        rows: Rows mapped (the store's written samples).
        tensor: (rows, ...) in the storage dtype, backed by the file's pages.
    """

    path: Path
    spec: ArraySpec
    rows: int
    tensor: Tensor
    identity: tuple[int, int] | None

    @classmethod
    def map(cls, root: Path, spec: ArraySpec, rows: int) -> MappedFile:
        """Map ``rows`` rows of the file of ``spec`` after checking that they are there."""
        dtype = parse_dtype(spec.dtype)
        path = root / spec.file
        if rows == 0 or spec.row_numel == 0:
            return cls(path, spec, rows, torch.empty((rows, *spec.shape), dtype=dtype), None)
        check_size(root, spec, rows, exact=False)
        stat = path.stat()
        # shared=False maps the file copy-on-write: pages are read lazily and the file is
        # never modified through the tensor.
        flat = torch.from_file(str(path), shared=False, size=rows * spec.row_numel, dtype=dtype)
        return cls(path, spec, rows, flat.view(rows, *spec.shape), (stat.st_dev, stat.st_ino))

    def check(self) -> None:
        """Raise :class:`DamagedStoreError` if the file shrank or was replaced since mapping.

        Touching a page past the end of a shrunk file raises SIGBUS, which no Python code can
        catch; this check (one ``stat``) keeps reads away from it.
        """
        if self.identity is None:
            return
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self.identity:
            raise DamagedStoreError(
                f"{self.path} was deleted or replaced after the store was opened; open the "
                "store again (FeatureStore.open) to read the new files"
            )
        needed = self.rows * self.spec.row_bytes
        if stat.st_size < needed:
            raise DamagedStoreError(
                f"{self.path} was cut to {stat.st_size} bytes while the store was open; it "
                f"held {self.rows} samples ({needed} bytes). Nothing was read from the lost "
                "part; repair the store with extract_features (same arguments) and open it again"
            )


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks (hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (one call may write less than asked)."""
    # Linux caps one write at about 2 GiB, hence the loop.
    view = data
    while len(view):
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:  # Windows has no pwrite; each process has its own file offset, so seek + write.
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, view)
        view = view[done:]
        offset += done
