"""Atomic file replacement: a reader sees the old file or the new one, never a torn write."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces ``path`` when the block succeeds.

    Write the new contents to the yielded path. On success it is fsynced, renamed over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows when both are on one file
    system, which the shared directory guarantees) and the directory is fsynced, so the rename
    itself survives a power cut. On an exception the temporary file is removed and ``path`` is
    untouched. A process killed mid-write leaves ``path`` intact and, at worst, a hidden
    ``.<name>.*.tmp`` file beside it.

    Every file this library writes (head checkpoints, ONNX graphs, store manifests, pictures)
    goes through here.

    A replaced file keeps its permission bits; a new file is created with mode 0644. Like a
    plain write, replacing a read-only file is refused (a rename alone would allow it).

    Args:
        path: The file to create or replace; its directory must exist.

    Raises:
        FileNotFoundError: The directory does not exist.
        IsADirectoryError: ``path`` is a folder.
        PermissionError: ``path`` exists and is read-only.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {target}: the directory {directory} does not exist; create it first"
        )
    mode = _mode_for(target)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=directory
    )
    os.close(handle)
    temporary = Path(temporary_name)
    # mkstemp makes the file private (0600); the result should be readable like any saved file.
    os.chmod(temporary, mode)
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(data)


def _mode_for(target: Path) -> int:
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a folder; pass a file name")
    try:
        current = target.stat()
    except FileNotFoundError:
        return 0o644
    if not os.access(target, os.W_OK):
        raise PermissionError(
            f"cannot replace {target}: the file is read-only; make it writable "
            "(chmod u+w) or write to another name"
        )
    return stat.S_IMODE(current.st_mode)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    # Directories cannot be opened for fsync on Windows; the rename is still atomic there.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
