"""What a stalled extraction (or training, or evaluation) says: who is waiting for whom, for how
long, and what to try.

The :class:`~dinov2_heads.watchdog.StallWatchdog` that ``extract_features`` runs (and the
training and evaluation loops of :mod:`~dinov2_heads.training`) calls :func:`stall_message`
when no batch has come for a while. The loop is then either waiting for the ``DataLoader`` (a
worker stuck on a read from a network file system, in a deadlock, on a sample that never
returns) or still working on the batch it has (the backbone, writing its features; a
training step; scoring it). Read in this process
(no workers), the line the reading is at names the culprit; with workers, the main process
only waits on them, so the message says how to look into them instead.
"""

from __future__ import annotations

import os

from dinov2_heads.cache.errors import ReadingLoop
from dinov2_heads.watchdog import Stall, format_duration

__all__ = ["stall_message"]

#: What works on a batch once it has come, per loop.
_WORKING = {
    "extraction": "the backbone has been working on the last one (and writing its features)",
    "training": "the backbone and the heads have been working on the last one (a training step)",
    "evaluation": "the backbone and the heads have been working on the last one (scoring it)",
}


def stall_message(stall: Stall, *, workers: int, loop: ReadingLoop = "extraction") -> str:
    """The warning for ``stall`` in a ``loop`` (an extraction, a training, an evaluation) that
    reads with ``workers`` worker processes.

    One paragraph on one line; it names the Python argument and the command line option
    alike (``num_workers=0``, ``--num-workers 0``), as a log line is not rewritten for the
    command line.
    """
    waited = f"no batch has come for {format_duration(stall.elapsed)}"
    again = f"Next warning at {format_duration(stall.next_warning)} without a batch"
    at = f", now at {stall.where}" if stall.where else ""
    if not stall.waiting:
        return (
            f"{waited}: {_WORKING[loop]} for {format_duration(stall.phase)}{at}. A large "
            "backbone over large "
            "batches on a CPU can take this long (a smaller batch size shows progress sooner); "
            f"on a GPU, check that no other process holds it (nvidia-smi). {again}"
        )
    if workers == 0:
        return (
            f"{waited}: the {loop} is waiting for the data, read in this process{at}. "
            "It may be stuck reading a file (a network file system), on a lock, or on a "
            f"sample that never returns. {again}"
        )
    processes = f"{workers} worker process{'es have' if workers != 1 else ' has'}"
    return (
        f"{waited}: the {loop} is waiting for the DataLoader, whose {processes} not "
        "handed over the next batch. A worker may be stuck reading "
        "a file (a network file system), in a deadlock, or on a sample that never returns. "
        "To see where: read in this process (num_workers=0, --num-workers 0), and this "
        "warning names the line the reading is at; or run py-spy dump --pid PID on each "
        f"worker, listed by ps --ppid {os.getpid()}. {again}"
    )
