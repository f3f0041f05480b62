"""The feature store's errors: a store made differently, a damaged store, a store in use."""

from __future__ import annotations

from dinov2_heads.errors import Dinov2HeadsError

__all__ = ["DamagedStoreError", "StoreLockedError", "StoreMismatchError"]


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
