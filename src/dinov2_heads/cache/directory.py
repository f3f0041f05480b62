"""A store's directory: which files the library wrote, and deleting only those.

A store directory holds ``manifest.json`` (format ``dinov2-heads/feature-store``), the data
files its manifest names (``<array>.bin``), and at times the lock file and the temporary files
of an atomic manifest write (``.manifest.json.*.tmp``). The manifest is written before any data
file, so data files never exist without a manifest naming (or, before the first batch, allowing)
them. Anything else in the folder is not the library's: ``overwrite`` refuses to delete a
folder holding anything else, and names what is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from dinov2_heads.cache.errors import DamagedStoreError
from dinov2_heads.cache.lock import LOCK_FILE, StoreLock
from dinov2_heads.cache.manifest import (
    BLOCK_ARRAY,
    MANIFEST,
    TOKEN_ARRAYS,
    is_store_manifest,
    read_manifest,
)

logger = logging.getLogger(__name__)

__all__ = ["prepare_directory", "remove_store", "store_files"]

# The data files a store may hold before its first batch fixes the layout.
_FIRST_BATCH_FILES = {
    f"{name}.bin" for name in (*TOKEN_ARRAYS, BLOCK_ARRAY, "sample_ids", "labels")
}


def _is_own_temporary(name: str) -> bool:
    return name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")


def store_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The entries of ``root`` that a store wrote, and every other entry.

    A data file counts as the store's only when a manifest in the store's format names it
    (any ``<token array>.bin``, ``sample_ids.bin`` or ``labels.<i>.bin`` before the first batch
    fixes the layout). Without such a manifest only the lock and temporary manifest files count.
    """
    own_names = {LOCK_FILE}
    if is_store_manifest(root):
        own_names.add(MANIFEST)
        try:
            layout = read_manifest(root).layout
        except DamagedStoreError:
            layout = None  # a damaged manifest vouches for no data file
        else:
            if layout is not None:
                own_names.update(spec.file for spec in layout.arrays.values())
            else:
                own_names.update(_FIRST_BATCH_FILES)
    own: list[Path] = []
    other: list[Path] = []
    for entry in sorted(root.iterdir()):
        mine = entry.is_file() and not entry.is_symlink()
        mine = mine and (entry.name in own_names or _is_own_temporary(entry.name))
        (own if mine else other).append(entry)
    return own, other


def _describe(entries: Iterable[Path]) -> str:
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def prepare_directory(root: Path, *, overwrite: bool, companions: Iterable[str] = ()) -> StoreLock:
    """Make ``root`` ready for a writer and lock it: created, resumable, or emptied.

    Args:
        root: The store directory.
        overwrite: Delete the store's files first. Refused (nothing deleted) when the folder
            holds anything a store did not write.
        companions: Names of files written beside the store by the caller (the command line's
            ``dataset.json``), deleted with it.

    Returns:
        The held lock; release it when done.

    Raises:
        ValueError: If ``root`` is a file, or a folder that is not a store and not empty, or
            (with ``overwrite``) holds files other than the store's; the message names them.
        StoreLockedError: If another process is writing the store.
    """
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another store path")
    if root.is_dir():
        _refuse_foreign(root, overwrite=overwrite, companions=set(companions))
    root.mkdir(parents=True, exist_ok=True)
    lock = StoreLock.acquire(root)
    try:
        if overwrite:
            # Checked again under the lock: the folder may have changed meanwhile.
            _delete_own(root, set(companions))
    except BaseException:
        lock.release()
        raise
    return lock


def remove_store(path: str | os.PathLike[str], *, companions: Iterable[str] = ()) -> None:
    """Delete the feature store at ``path``: its files and then the folder, if left empty.

    Only what the library wrote is deleted. A folder that holds anything else (a user's own
    ``manifest.json``, ``pytorch_model.bin``, images) is refused as a whole, and nothing is
    deleted.

    Args:
        path: The store directory; a missing one is fine.
        companions: Names of files written beside the store by the caller, deleted with it.

    Raises:
        ValueError: If the folder holds anything a store did not write; the message names it.
        StoreLockedError: If another process is writing the store.
    """
    root = Path(path)
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"{root} is not a feature store: it is a file; nothing was deleted")
    _refuse_foreign(root, overwrite=True, companions=set(companions))
    with StoreLock.acquire(root):
        _delete_own(root, set(companions))
    with contextlib.suppress(OSError):  # not empty: someone wrote into it meanwhile
        root.rmdir()


def _refuse_foreign(root: Path, *, overwrite: bool, companions: set[str]) -> None:
    _, other = store_files(root)
    if not is_store_manifest(root):
        companions = set()  # a caller's file beside no store is not the caller's to delete
    other = [entry for entry in other if not (entry.name in companions and entry.is_file())]
    if not other:
        return
    if overwrite:
        raise ValueError(
            f"refusing to overwrite {root}: it holds files that a feature store does not "
            f"write ({_describe(other)}); nothing was deleted. Choose a new or empty folder, "
            "or move those files away first"
        )
    if not is_store_manifest(root):
        raise ValueError(
            f"{root} is not empty and is not a feature store (no dinov2-heads {MANIFEST}; it "
            f"holds {_describe(other)}); choose an empty or new directory"
        )


def _delete_own(root: Path, companions: set[str]) -> None:
    own, other = store_files(root)
    if not is_store_manifest(root):
        companions = set()
    other_names = [entry for entry in other if not (entry.name in companions and entry.is_file())]
    if other_names:
        raise ValueError(
            f"refusing to overwrite {root}: it holds files that a feature store does not "
            f"write ({_describe(other_names)}); nothing was deleted"
        )
    doomed = [entry for entry in own if entry.name != LOCK_FILE]
    doomed += [entry for entry in other if entry.name in companions]
    # The manifest goes last: a deletion cut short leaves a manifest that still vouches for
    # the files left, so deleting again finishes the job.
    doomed.sort(key=lambda entry: entry.name == MANIFEST)
    for entry in doomed:
        entry.unlink()
    if doomed:
        logger.info("deleted the feature store at %s (%d files)", root, len(doomed))
