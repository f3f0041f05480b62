"""The writer's lock on a store: an advisory lock file that names the process holding it.

One process at a time writes a store (under ``torchrun``, rank 0 holds the lock for the job).
The lock file ``.feature-store.lock`` holds the owner's pid and host name. On POSIX systems the
file is also locked with ``flock``, which the kernel releases when the owner dies however it
dies (``kill -9`` included), so a lock left by a dead process is taken over at once, and two
processes can never both hold it. Elsewhere the file is created exclusively, and a lock whose
pid no longer runs on this host is taken over.

Readers take no lock: a finished store never changes, and an unfinished one only grows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

from dinov2_heads.cache.errors import StoreLockedError

try:  # POSIX
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "StoreLock"]

#: The lock file's name inside a store directory.
LOCK_FILE = ".feature-store.lock"


class StoreLock:
    """The lock on the store at ``root``, held from :meth:`acquire` until :meth:`release`.

    Use as a context manager: ``with StoreLock.acquire(root): ...``.

    Raises:
        StoreLockedError: From :meth:`acquire`, when another live process holds the lock; the
            message names its pid and host.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, root: Path) -> StoreLock:
        """Take the lock of the store directory ``root`` (which must exist)."""
        path = root / LOCK_FILE
        for _ in range(100):  # each retry follows a release or take-over by another process
            fd = _lock_with_flock(path) if _fcntl is not None else _lock_exclusively(path)
            if fd is not None:
                _write_owner(fd)
                return cls(path, fd)
        raise StoreLockedError(f"could not take the lock {path}: it keeps changing owner")

    def release(self) -> None:
        """Remove the lock file and let go of the lock (a second call does nothing)."""
        if self._fd is None:
            return
        # Unlink while still holding the lock, so no process locks the old file after us.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _lock_with_flock(path: Path) -> int | None:
    """The fd of ``path`` locked with flock, ``None`` to retry; raises if another holds it."""
    assert _fcntl is not None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise _locked(path, owner) from None
    # The previous owner may have released (unlinked) the file between our open and flock:
    # a lock on a file no longer at ``path`` locks nothing.
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    owner = _read_owner(fd)
    if owner and owner.split()[0] != str(os.getpid()):
        logger.info("taking over the lock %s left by process %s (no longer running)", path, owner)
    return fd


def _lock_exclusively(path: Path) -> int | None:
    """Create ``path`` exclusively; take over a lock whose process is gone (no flock)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    try:
        owner = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None  # released meanwhile: try again
    if _owner_alive(owner):
        raise _locked(path, owner)
    logger.info("taking over the lock %s left by process %s (no longer running)", path, owner)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def _owner_alive(owner: str) -> bool:
    parts = owner.split()
    if len(parts) < 2 or not parts[0].isdigit():
        return True  # unreadable: do not guess that it is stale
    if parts[1] != socket.gethostname():
        return True  # another host's process cannot be checked from here
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


def _locked(path: Path, owner: str) -> StoreLockedError:
    pid, _, host = owner.partition(" ")
    who = f"process {pid} on {host}" if pid and host else "another process"
    return StoreLockedError(
        f"the feature store at {path.parent} is being written by {who} (lock file {path}); "
        "wait for it to finish, or stop it, then run again (it resumes); two processes "
        "writing one store would mix their features"
    )
