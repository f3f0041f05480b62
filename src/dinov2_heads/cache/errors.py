"""The feature cache's errors: a store made differently, a damaged store, a store in use, and
data loading that ran out of shared memory."""

from __future__ import annotations

from dinov2_heads.errors import Dinov2HeadsError

__all__ = ["DamagedStoreError", "SharedMemoryError", "StoreLockedError", "StoreMismatchError"]


class StoreMismatchError(Dinov2HeadsError, ValueError):
    """A store was opened for a different backbone, input size, preprocessing or layout."""


class DamagedStoreError(Dinov2HeadsError, ValueError):
    """A store's manifest or data files are not what the library wrote.

    Raised for a manifest that is not valid (hand-edited, cut), data files shorter or longer
    than the manifest says, files that changed under a reader, and checksums that do not match.
    The message names the file and what is wrong.
    """


class StoreLockedError(Dinov2HeadsError, OSError):
    """Another process is writing the store (its lock file names the process)."""


class SharedMemoryError(Dinov2HeadsError, OSError, RuntimeError):
    """``DataLoader`` workers ran out of shared memory (``/dev/shm``) handing batches over.

    Raised in place of torch's own error ("DataLoader worker (pid N) is killed by signal: Bus
    error", "unable to write to file </torch_...>: No space left on device"), which it chains
    as its cause. The message says how large ``/dev/shm`` is and the fixes: no workers, more
    shared memory (``docker run --shm-size=2g``), smaller batches. A ``RuntimeError`` too, as
    torch's error was, so code that caught that still catches this.
    """
