"""Reading ``.safetensors`` files without the safetensors package, every size checked first.

The format is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) and the
tensor bytes, back to back, with offsets counted from the end of the header. Every tensor's
shape and dtype must account for exactly its bytes, and the tensors must cover the data
without a gap, an overlap or anything after the last one; a file that breaks any of these is
refused before a byte of tensor data is read.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
from torch import Tensor

from dinov2_heads.checkpoints.errors import CheckpointError, CheckpointFileError

#: Header dtype names -> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}

#: The largest header the safetensors package itself accepts.
MAX_HEADER = 100_000_000
_CHUNK = 1 << 26


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in the file.

    Attributes:
        name: Its name.
        dtype: Its dtype.
        shape: Its shape.
        start: The file offset of its first byte.
        nbytes: Its size in bytes (numel x item size, checked against the header's offsets).
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def read_layout(path: Path, stream: BinaryIO, size: int) -> list[TensorEntry]:
    """Parse and check the header of the safetensors file open as ``stream`` (``size`` bytes).

    Raises:
        CheckpointError: The header is malformed, a shape does not match its bytes, the
            tensors overlap or leave a gap, or the file is shorter or longer than they need.
    """
    header, length = _read_header(path, stream, size)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + length
    entries = [
        _entry(path, name, value, data_start)
        for name, value in header.items()
        if name != "__metadata__"
    ]
    _check_coverage(path, entries, data_start, size)
    return entries


def read_tensors(
    path: Path, stream: io.BufferedIOBase, entries: list[TensorEntry]
) -> dict[str, Tensor]:
    """Read each tensor with ``readinto`` into memory of its own: nothing stays mapped."""
    out: dict[str, Tensor] = {}
    for entry in entries:
        buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
        view = buffer.numpy().data
        stream.seek(entry.start)
        done = 0
        while done < entry.nbytes:
            try:
                got = stream.readinto(view[done : done + _CHUNK])
            except OSError as error:
                raise CheckpointFileError(
                    f"cannot read {path}: {error.strerror or error}"
                ) from error
            if not got:
                # The size was checked when the file was opened: it shrank while being read.
                raise CheckpointError(
                    f"{path} ended after {entry.start + done} bytes while {entry.name!r} was "
                    "read; the file was truncated or replaced during the read"
                )
            done += got
        out[entry.name] = buffer.view(entry.dtype).reshape(entry.shape)
    return out


def map_tensors(path: Path, entries: list[TensorEntry], size: int) -> dict[str, Tensor]:
    """Tensors that view a private memory map of the file (pages read on use, shared).

    A tensor whose bytes are not aligned to its item size is copied out of the map.
    """
    storage = cast(
        torch.UntypedStorage, torch.UntypedStorage.from_file(os.fspath(path), False, size)
    )
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    out: dict[str, Tensor] = {}
    for entry in entries:
        raw = whole[entry.start : entry.start + entry.nbytes]
        if entry.start % entry.dtype.itemsize:
            raw = raw.clone()
        out[entry.name] = raw.view(entry.dtype).reshape(entry.shape)
    return out


def _entry(path: Path, name: str, value: object, data_start: int) -> TensorEntry:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: the safetensors header entry {name!r} {what}; the file was edited or "
            "damaged: save or download it again"
        )

    if not isinstance(value, dict):
        raise bad(f"is a JSON {type(value).__name__}, not an object")
    dtype = DTYPES.get(str(value.get("dtype")))
    if dtype is None:
        raise bad(f"has the unknown dtype {value.get('dtype')!r}")
    shape = value.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise bad(f"has the shape {shape!r}; expected a list of sizes")
    offsets = value.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise bad(f"has the data_offsets {offsets!r}; expected [begin, end]")
    nbytes = math.prod(shape) * dtype.itemsize
    stored = offsets[1] - offsets[0]
    if nbytes != stored:
        raise bad(
            f"has the shape {tuple(shape)} of {value['dtype']} ({nbytes} bytes), but the file "
            f"stores {stored} bytes for it"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], nbytes)


def _check_coverage(path: Path, entries: list[TensorEntry], data_start: int, size: int) -> None:
    position = data_start
    for entry in sorted(entries, key=lambda e: (e.start, e.nbytes)):
        if entry.start != position:
            what = "overlaps the one before" if entry.start < position else "leaves a gap"
            raise CheckpointError(
                f"{path}: the safetensors tensor {entry.name!r} {what} (it starts at byte "
                f"{entry.start}, the previous one ends at {position}); the file was edited or "
                "damaged: save or download it again"
            )
        position += entry.nbytes
    if position > size:
        raise CheckpointError(
            f"{path} could not be read as a safetensors file; it is truncated or corrupted "
            f"(its tensors need {position} bytes, the file holds {size})"
        )
    if position < size:
        raise CheckpointError(
            f"{path} could not be read as a safetensors file; it is truncated or corrupted "
            f"({size - position} bytes follow the last tensor)"
        )


def _read_header(path: Path, stream: BinaryIO, size: int) -> tuple[Any, int]:
    """The parsed JSON header of the safetensors file open as ``stream`` (``size`` bytes), and
    its length in bytes.

    Raises:
        CheckpointError: The length does not fit the file, or the header is not JSON.
    """
    stream.seek(0)
    length = int.from_bytes(stream.read(8), "little")
    if not 0 < length <= min(size - 8, MAX_HEADER):
        raise CheckpointError(
            f"{path} could not be read as a safetensors file; it is truncated or corrupted "
            f"(its header claims {length} bytes, the file holds {size})"
        )
    raw = stream.read(length)
    try:
        return json.loads(raw), length
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} could not be read as a safetensors file; it is truncated or corrupted "
            f"(its header is not valid JSON: {error})"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (``{}`` when it has none).

    Only the header is read, and only its length is checked: for telling what a file is, not
    for loading it (:func:`read_layout` checks every tensor).

    Raises:
        CheckpointFileError: The file cannot be read.
        CheckpointError: The header is malformed.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            header, _ = _read_header(path, stream, size)
    except OSError as error:
        raise CheckpointFileError(f"cannot read {path}: {error.strerror or error}") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(key): str(value) for key, value in metadata.items()}
