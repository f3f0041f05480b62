"""The feature cache's errors: a store made differently, a damaged store, a store in use, and
data loading that ran out of shared memory or lost a worker process."""

from __future__ import annotations

from typing import Literal

from dinov2_heads.errors import Dinov2HeadsError

__all__ = [
    "AFTER_FAILURE",
    "DamagedStoreError",
    "ReadingLoop",
    "SharedMemoryError",
    "StoreLockedError",
    "StoreMismatchError",
    "WorkerDiedError",
]


#: The loop that reads the data: an extraction (``extract_features``), a training
#: (``fit_grid``, ``train_one_epoch``) or an evaluation (``evaluate_grid``,
#: ``evaluate_dense``). Its stall warnings and its errors for a dead worker say which, and
#: what happened to the work done before.
ReadingLoop = Literal["extraction", "training", "evaluation"]

#: What a loop that stopped for its data has kept, and what to run.
AFTER_FAILURE: dict[str, str] = {
    "extraction": (
        "The batches finished before are kept: run the same extraction again to resume it"
    ),
    "training": ("The training stopped part way through an epoch: run it again once this is fixed"),
    "evaluation": (
        "The evaluation stopped part way through (the heads are unchanged): run it again once "
        "this is fixed"
    ),
}


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


class WorkerDiedError(Dinov2HeadsError, RuntimeError):
    """A ``DataLoader`` worker process ended without handing its batch over.

    Raised in place of torch's own error ("DataLoader worker (pid N) is killed by signal:
    Killed", "DataLoader worker (pid(s) N) exited unexpectedly"), which it chains as its
    cause. The message names how the worker ended, the likely cause and the fixes: for
    ``SIGKILL``, nearly always the kernel's out-of-memory killer, so fewer workers, smaller
    batches or more memory; for a crash (``SIGSEGV``, ``SIGABRT``), reading in the main
    process to see where. In an extraction the batches before stay in the store: the same
    call resumes it; a training (``fit_grid``, ``train_one_epoch``) and an evaluation
    (``evaluate_grid``, ``evaluate_dense``) raise it too. A
    ``RuntimeError`` too, as torch's error was. (A worker killed by ``SIGBUS`` ran out of
    shared memory: that is a :class:`SharedMemoryError`.)
    """
