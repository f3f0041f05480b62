"""Checking a checkpoint's bytes: the CRC-32 that ``torch.save`` records, and storage sizes.

``torch.save`` writes a zip archive and records a CRC-32 checksum of every member: the pickled
structure (names, shapes, dtypes) and each tensor's bytes. ``torch.load`` never checks them.
:func:`verify_checkpoint_file` does, so a flipped byte or a hand-edited shape is an error
instead of silently different weights. It reads the whole file once more, so it is asked for
(``verify=True``), not done on every load.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from dinov2_heads.checkpoints.errors import CheckpointError, CheckpointFileError

logger = logging.getLogger(__name__)

#: A tensor's bytes inside a ``torch.save`` archive: ``archive/data/0``, ``archive/data/1``, ...
_DATA_RECORD = re.compile(r"^[^/]+/data/[^/]+$")
_CHUNK = 1 << 24


def verify_checkpoint_file(path: str | Path) -> int:
    """Check every checksum of a checkpoint file; returns how many members were checked.

    A PyTorch zip file (``torch.save`` since PyTorch 1.6) has a CRC-32 per member, and every one
    is compared with the bytes. Old-style PyTorch files and safetensors files carry no
    checksum: only their layout can be checked (which reading always does), and 0 is returned
    with a warning. A file written with ``torch.serialization.set_crc32_options(False)`` has no
    checksums either (every recorded CRC is 0), also reported with 0 and a warning.

    Args:
        path: A checkpoint file.

    Raises:
        CheckpointError: A member's bytes do not match its checksum, or the archive is
            damaged; the message names the member.
        CheckpointFileError: The file cannot be read.
    """
    file = Path(path)
    try:
        with file.open("rb") as stream:
            is_zip = stream.read(4) == b"PK\x03\x04"
    except OSError as error:
        raise CheckpointFileError(f"cannot read {file}: {error.strerror or error}") from error
    if not is_zip:
        logger.warning(
            "%s records no checksums (only PyTorch zip files do); its layout was checked", file
        )
        return 0
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            if members and all(info.CRC == 0 for info in members if info.file_size):
                logger.warning(
                    "%s was saved without checksums (set_crc32_options(False)); nothing to verify",
                    file,
                )
                return 0
            for info in members:
                _check_member(archive, info)
    except zipfile.BadZipFile as error:
        raise CheckpointError(
            f"{file} failed verification: its zip archive is damaged ({error}); the file was "
            "edited or damaged: save or download it again"
        ) from None
    except OSError as error:
        raise CheckpointFileError(f"cannot read {file}: {error.strerror or error}") from error
    logger.info("%s: the checksums of all %d members match", file, len(members))
    return len(members)


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    try:
        with archive.open(info) as member:
            while member.read(_CHUNK):
                pass
    except zipfile.BadZipFile as error:
        what = "a tensor's bytes" if _DATA_RECORD.match(info.filename) else "the structure"
        raise CheckpointError(
            f"{archive.filename} failed verification: {info.filename} ({what}) does not match "
            f"the checksum recorded when it was saved ({error}); the file was edited or "
            "damaged: save or download it again"
        ) from None


def check_mapped_sizes(path: Path, content: Mapping[str, Any]) -> None:
    """Every memory-mapped tensor's storage must be exactly one data member of the archive.

    ``torch.load(mmap=True)`` takes a storage's size from the pickled structure and maps that
    many bytes from where its member starts, whatever the member's real size: a hand-edited
    size reads the bytes of other members (a read without the map checks this). The storage
    sizes are compared with the sizes in the zip directory, which costs no tensor data read.

    Raises:
        CheckpointError: A storage is larger or smaller than any data member.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {i.file_size for i in archive.infolist() if _DATA_RECORD.match(i.filename)}
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: cannot list the zip archive's members ({error})") from None
    for name, tensor in _tensors(content):
        nbytes = tensor.untyped_storage().nbytes()
        if nbytes and nbytes not in sizes:
            raise CheckpointError(
                f"{path}: {name!r} claims a storage of {nbytes} bytes, but no tensor data in "
                "the file has that size; the file was edited or damaged: save or download it "
                "again"
            )


def _tensors(value: Any, name: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{name}[{index}]")
