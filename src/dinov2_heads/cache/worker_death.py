"""``DataLoader`` worker processes that die: how they died, and an error that says what to do.

torch reports a worker that ended without handing its batch over in several ways, depending
on where the main process was when its ``SIGCHLD`` handler noticed:

- ``"DataLoader worker (pid N) is killed by signal: Killed."``, raised wherever the main
  process is (reading the next batch, or running the backbone);
- ``"DataLoader worker (pid(s) N) exited unexpectedly"`` while it waits for a batch, with
  the former as its cause, or with nothing when the worker's end was noticed first;
- ``"DataLoader worker (pid N) exited unexpectedly with exit code 1. Details are lost due
  to multiprocessing. ..."`` for a worker that exited without a signal;
- a lost connection (``ConnectionResetError``, ``EOFError``) where a dying worker's pipe
  closed first.

:func:`worker_death_of` asks the worker processes themselves how they ended, where torch's
error does not say; :func:`dead_worker` reads the death from torch's messages; and
:func:`worker_died_error` makes the :class:`~dinov2_heads.cache.errors.WorkerDiedError` that
names the likely cause and the fixes. A worker killed by ``SIGKILL`` was, nearly always, ended
by the kernel's out-of-memory killer; ``SIGBUS`` is a worker out of shared memory
(:mod:`~dinov2_heads.cache.shared_memory` reports that one).
"""

from __future__ import annotations

import multiprocessing.connection
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dinov2_heads.cache.errors import AFTER_FAILURE, ReadingLoop, WorkerDiedError
from dinov2_heads.cache.shared_memory import is_shared_memory_error

__all__ = ["WorkerDeath", "dead_worker", "worker_death_of", "worker_died_error"]

_KILLED = re.compile(
    r"DataLoader worker \(pid (\d+)\) (?:is|was) killed by signal: ([^.(\n]+?)\s*(?:\.|\(|$)"
)
_EXIT_CODE = re.compile(
    r"DataLoader worker \(pid (\d+)\) exited unexpectedly with exit code (-?\d+)"
)
_EXITED = re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly")

#: Signals that mean the worker crashed in its own (native) code.
_CRASHES = ("SIGSEGV", "SIGABRT", "SIGILL", "SIGFPE")


@dataclass(frozen=True)
class WorkerDeath:
    """How a ``DataLoader`` worker ended.

    Attributes:
        pids: The worker's process id (several when torch named several, none when unknown).
        signal: The signal that killed it (``signal.SIGKILL``), or ``None``.
        exit_code: Its exit code when it exited without a signal, or ``None``.
    """

    pids: tuple[int, ...]
    signal: int | None = None
    exit_code: int | None = None

    @property
    def signal_name(self) -> str | None:
        """``"SIGKILL"``, or ``None``."""
        return _signal_name(self.signal) if self.signal is not None else None

    def describe(self) -> str:
        """``"was killed by signal SIGKILL (Killed)"``, ``"exited with code 1"``, or
        ``"ended unexpectedly"``."""
        if self.signal is not None:
            return f"was killed by signal {self.signal_name} ({_description(self.signal)})"
        if self.exit_code is not None:
            return f"exited with code {self.exit_code}"
        return "ended unexpectedly"


def dead_worker(error: BaseException) -> WorkerDeath | None:
    """The worker death that ``error`` (or one of its causes) reports, else ``None``.

    A report that names the signal or the exit code wins over torch's plain "exited
    unexpectedly".
    """
    plain: WorkerDeath | None = None
    for text in _messages(error):
        killed = _KILLED.search(text)
        if killed is not None:
            number = _signal_number(killed.group(2).strip())
            if number is not None:
                return WorkerDeath((int(killed.group(1)),), signal=number)
        code = _EXIT_CODE.search(text)
        if code is not None:
            return WorkerDeath((int(code.group(1)),), exit_code=int(code.group(2)))
        exited = _EXITED.search(text)
        if exited is not None and plain is None:
            pids = tuple(int(pid) for pid in exited.group(1).replace(" ", "").split(",") if pid)
            plain = WorkerDeath(pids)
    return plain


def worker_death_of(
    workers: Iterable[Any], error: BaseException, *, wait: float = 1.0
) -> RuntimeError | None:
    """An error that names how a worker died, where torch's ``error`` does not; else ``None``.

    For a lost connection to a worker ("Connection reset by peer", ``EOFError``) or torch's
    plain "DataLoader worker (pid(s) N) exited unexpectedly", the ``workers`` that end within
    ``wait`` seconds are asked how they died. Errors a worker raised itself, and reports that
    already name the signal or the exit code, are left as they are.

    Args:
        workers: The ``multiprocessing`` processes of the loader's iterator.
        error: What reading the next batch raised.
        wait: Seconds to wait for a dying worker to end.

    Returns:
        A ``RuntimeError`` in torch's words: ``"DataLoader worker (pid N) was killed by
        signal: Bus error (SIGBUS)"``, ``"... exited unexpectedly with exit code 1"``.
    """
    if is_shared_memory_error(error):
        return None  # torch said what ran out
    text = str(error)
    if "in DataLoader worker process" in text:
        return None  # a worker's own error, handed over by torch: the worker is alive
    if isinstance(error, RuntimeError) and "DataLoader worker (pid" not in text:
        return None
    known = dead_worker(error)
    if known is not None and (known.signal is not None or known.exit_code is not None):
        return None
    processes = [worker for worker in workers if hasattr(worker, "sentinel")]
    if not processes:
        return None
    ended = multiprocessing.connection.wait([w.sentinel for w in processes], timeout=wait)
    for worker in processes:
        if worker.sentinel in ended:
            worker.join(wait)  # its sentinel closes as it exits, a moment before its exit code
        code = worker.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            number = -code
            return RuntimeError(
                f"DataLoader worker (pid {worker.pid}) was killed by signal: "
                f"{_description(number)} ({_signal_name(number)})"
            )
        return RuntimeError(
            f"DataLoader worker (pid {worker.pid}) exited unexpectedly with exit code {code}"
        )
    return None


def worker_died_error(
    death: WorkerDeath,
    *,
    workers: int | None,
    batch_size: int | None,
    loop: ReadingLoop = "extraction",
) -> WorkerDiedError:
    """The :class:`~dinov2_heads.cache.errors.WorkerDiedError` for ``death``: what happened,
    the likely cause, what the ``loop`` kept (an extraction resumes), and the fixes.

    One paragraph on one line (the command line prints an error's first line); the fixes
    name the Python arguments (``num_workers=0``, ``batch_size``), which the command line
    shows as its options.
    """
    pids = ", ".join(str(pid) for pid in death.pids)
    who = f"a DataLoader worker process (pid {pids})" if pids else "a DataLoader worker process"
    reading = []
    if workers is not None:
        reading.append(f"{workers} worker process{'es' if workers != 1 else ''}")
    if batch_size is not None:
        reading.append(f"batches of {batch_size} samples")
    how = f" with {' and '.join(reading)}" if reading else ""
    what = f"{who} {death.describe()} while reading the data{how}"
    resume = AFTER_FAILURE[loop]
    name = death.signal_name
    in_process = "num_workers=0 reads in this process"
    if name == "SIGKILL" or (name is None and death.exit_code is None):
        fewer = max((workers or 2) // 2, 1)
        message = (
            f"{what}. The likeliest cause is memory: the machine (or the container's "
            "memory limit) ran out, and the kernel's out-of-memory killer ended the process "
            '(the kernel log, dmesg, then has an "Out of memory" line naming it); another '
            f"program may also have killed it. {resume}. To use less memory, read with fewer "
            f"workers (num_workers={fewer}; {in_process}), use a smaller batch_size, or give "
            "the machine or container more memory"
        )
    elif name in _CRASHES:
        message = (
            f"{what}: it crashed in native code (an image decoder, or another library that "
            f"fails in a forked worker process). {resume}. To see where it crashes, read with "
            f"num_workers=0 (in this process, where python -X faulthandler prints the stack)"
        )
    elif name is not None:
        message = (
            f"{what}: something outside stopped it (the signal came from another process). {resume}"
        )
    else:
        message = (
            f"{what}: the worker's own error, if there was one, is lost (a library that "
            f"called exit(), or a crash). {resume}. To see the error, read with "
            f"num_workers=0 (in this process)"
        )
    return WorkerDiedError(message)


def _messages(error: BaseException) -> Iterable[str]:
    """The messages of ``error`` and its causes, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        current = current.__cause__ or current.__context__


def _signal_number(text: str) -> int | None:
    """The signal that ``strsignal`` describes as ``text`` (``"Killed"``) or is named ``text``."""
    for number in sorted(signal.valid_signals()):
        if text in (_description(number), _signal_name(number)):
            return int(number)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _description(number: int) -> str:
    try:
        described = signal.strsignal(number)
    except ValueError:
        described = None
    return described or _signal_name(number)
