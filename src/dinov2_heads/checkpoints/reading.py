"""Reading a checkpoint file from disk safely: no code runs, memory-mapped where possible."""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from dinov2_heads.checkpoints.errors import (
    CheckpointError,
    CheckpointFileError,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)
from dinov2_heads.checkpoints.integrity import check_mapped_sizes, verify_checkpoint_file
from dinov2_heads.checkpoints.official_files import missing_file_advice
from dinov2_heads.checkpoints.safetensors_file import (
    MAX_HEADER,
    map_tensors,
    read_layout,
    read_tensors,
)

logger = logging.getLogger(__name__)

#: File name endings that usually hold weights; the content decides, these only help messages.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")

FileKind = Literal["torch-zip", "torch-legacy", "safetensors"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_UNSAFE_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_SPECIAL = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def read_checkpoint_file(
    path: str | os.PathLike[str], *, mmap: bool = False, verify: bool = False
) -> dict[str, Any]:
    """The top-level mapping stored in a checkpoint file, without running any code from it.

    By default every tensor is read into memory of its own, one at a time, and nothing of the
    file stays open or mapped: the result does not change when the file is rewritten or
    truncated afterwards (saving a new checkpoint under the same name is an everyday thing),
    and it needs about the file's size in RAM. The format is recognised from the first bytes,
    not from the file name; a file whose name says otherwise is read for what it is. Every
    tensor's size is checked against the bytes the file holds for it. Everything lands on the
    CPU.

    Args:
        path: A local file.
        mmap: Map the file into memory instead (PyTorch zip and safetensors files): the
            tensors then view the file's pages, which are read when first used and shared
            with other processes mapping the same file. Faster to open, but the tensors stay
            a view of the file: rewriting it in place (``torch.save`` to the same path,
            ``cp``) silently changes them, and truncating it kills the process (``SIGBUS``)
            at the next read. Only for files nothing rewrites while the tensors live.
        verify: Also compare every checksum that the file records (``torch.save`` writes a
            CRC-32 per member) with its bytes; see :func:`verify_checkpoint_file`. Reads the
            file once more.

    Returns:
        The mapping saved in the file, as stored: a state dict or a container around one
        (see :func:`~dinov2_heads.checkpoints.unwrap_state_dict`).

    Raises:
        CheckpointNotFoundError: Nothing exists at ``path``.
        CheckpointIsADirectoryError: ``path`` is a directory.
        CheckpointFileError: The file cannot be opened, or it is not a regular file (a named
            pipe or a device, which could block forever).
        UnsafeCheckpointError: Reading it would need arbitrary unpickling.
        CheckpointError: The file is empty, truncated, corrupted, fails verification or
            holds no mapping.
    """
    file = existing_file(path)
    kind = sniff_file_kind(file)
    logger.debug("reading %s as %s", file, kind)
    _note_misleading_name(file, kind)
    if verify:
        verify_checkpoint_file(file)
    if kind == "safetensors":
        return _read_safetensors(file, mmap=mmap)
    content = _torch_load(file, mmap=mmap and kind == "torch-zip")
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{file} holds a {type(content).__name__}, not a state dict (a mapping from names to "
            "tensors); save model.state_dict() instead of the model or a single tensor"
        )
    if mmap and kind == "torch-zip" and not _misnamed(file):
        check_mapped_sizes(file, content)
    return dict(content)


def sniff_file_kind(path: Path) -> FileKind:
    """Tell the storage format from a file's first bytes.

    Raises:
        CheckpointError: The bytes are not those of a PyTorch or safetensors file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            head = stream.read(64)
    except OSError as error:
        raise CheckpointFileError(f"cannot read {path}: {error.strerror or error}") from error
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes); the download or copy was probably interrupted"
        )
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    # Before the pickle test: a header length whose low byte is 0x80 starts like a pickle.
    if len(head) > 8:
        header_size = int.from_bytes(head[:8], "little")
        if 0 < header_size <= min(size - 8, MAX_HEADER) and head[8:9] == b"{":
            return "safetensors"
    if head[0] == _PICKLE_PROTO:
        return "torch-legacy"
    raise CheckpointError(f"{path} is not a PyTorch or safetensors checkpoint: {_describe(head)}")


def existing_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` to an existing file (``~`` expanded).

    Raises:
        TypeError: ``path`` is not a path.
        CheckpointNotFoundError: Nothing is there; the message lists checkpoints nearby.
        CheckpointIsADirectoryError: It is a folder; the message lists the checkpoints in it.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"expected a file path (str or os.PathLike), got {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        hint = ""
        if file.parent.is_dir():
            nearby = _checkpoints_in(file.parent)
            if nearby:
                hint = f"; checkpoints in {file.parent}: {', '.join(nearby)}"
        raise CheckpointNotFoundError(
            f"no checkpoint file at {file}{hint}; {missing_file_advice(file)}"
        )
    if file.is_dir():
        nearby = _checkpoints_in(file)
        inside = f"it contains {', '.join(nearby)}" if nearby else "it holds no checkpoint file"
        # Model folders are read by read_checkpoint / load_backbone, which never come here.
        raise CheckpointIsADirectoryError(
            f"{file} is a directory, not a file: pass the path of one file inside it; {inside}"
        )
    _refuse_special_file(file)
    return file


def _refuse_special_file(file: Path) -> None:
    """Pipes and devices are not read: ``open`` on a FIFO blocks until a writer appears."""
    try:
        mode = file.stat().st_mode
    except OSError as error:
        raise CheckpointFileError(f"cannot read {file}: {error.strerror or error}") from error
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _SPECIAL if test(mode)), "special file")
    raise CheckpointFileError(
        f"{file} is a {kind}, not a regular file; checkpoints are read from regular files only "
        "(reading a pipe or a device can block forever or never end): save the data to a file "
        "and pass its path"
    )


def _checkpoints_in(folder: Path, limit: int = 5) -> list[str]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    except OSError:
        return []
    return names[:limit] + (["..."] if len(names) > limit else [])


def _describe(head: bytes) -> str:
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer; run `git lfs pull` to fetch the real file"
    if head.lstrip().startswith((b"<", b"{")):
        return "it looks like text (an HTML page or JSON?); the download probably failed"
    return f"it starts with the bytes {head[:8]!r}"


def _misnamed(path: Path) -> bool:
    """A PyTorch file named ``.safetensors``, which ``torch.load`` would hand to safetensors."""
    return path.name.endswith(".safetensors")


def _note_misleading_name(path: Path, kind: FileKind) -> None:
    if kind != "safetensors" and _misnamed(path):
        logger.warning(
            "%s is a PyTorch file (torch.save, %s format), not a safetensors file as its name "
            "says; it is read as a PyTorch file",
            path,
            "zip" if kind == "torch-zip" else "legacy",
        )
    elif kind == "safetensors" and path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        logger.info("%s is a safetensors file despite its %s name; read as one", path, path.suffix)


def _torch_load(path: Path, *, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():
            # TorchScript archives make torch.load warn before it refuses them; the error says it.
            warnings.simplefilter("ignore")
            if _misnamed(path):
                # torch.load passes a path ending in .safetensors to the safetensors package
                # whatever the content; an open file is read by content. It cannot be mapped.
                with path.open("rb") as stream:
                    return torch.load(stream, map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        message = str(error)
        if "Weights only load failed" in message:
            found = _UNSAFE_GLOBAL.search(message)
            if found:
                raise UnsafeCheckpointError(
                    f"{path} needs arbitrary unpickling to load (it refers to "
                    f"{found.group(1)!r}), which can run code, so it was refused and nothing in "
                    "it was executed. If you trust the file, load it once with "
                    "torch.load(path, weights_only=False) and torch.save only the state dict "
                    "(model.state_dict(), a mapping of names to tensors) to a new file"
                ) from None
            raise CheckpointError(
                f"{path} could not be read safely: it is corrupted, or it needs arbitrary "
                f"unpickling, which is refused ({_weights_only_reason(message)})"
            ) from None
        if "TorchScript" in message:
            raise CheckpointError(
                f"{path} is a TorchScript archive, not a state dict; load it with torch.jit.load "
                "and save model.state_dict() with torch.save"
            ) from None
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint; it is truncated or corrupted "
            f"({type(error).__name__}: {_first_line(message)})"
        ) from error


def _read_safetensors(path: Path, *, mmap: bool) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            entries = read_layout(path, stream, size)
            if mmap:
                return map_tensors(path, entries, size)
            return read_tensors(path, stream, entries)
    except OSError as error:
        raise CheckpointFileError(f"cannot read {path}: {error.strerror or error}") from error


def _weights_only_reason(message: str) -> str:
    # torch's message starts with generic advice; the specific reason is on a later line.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    specific = [line for line in lines if "error" in line.lower() or "unsupported" in line.lower()]
    return _first_line(specific[-1] if specific else lines[-1] if lines else "")


def _first_line(message: str, limit: int = 200) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."
