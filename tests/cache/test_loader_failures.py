"""Reading the data of an extraction: nothing fails silently, nothing is lost.

A loader or a backbone that stalls gets a warning that says which one waits and what to try,
from a watchdog thread that ends with the extraction; a worker killed from outside (the
out-of-memory killer's ``SIGKILL``), crashed or exited is one clear
:class:`~dinov2_heads.cache.WorkerDiedError`, and the store resumes to the same result; an
error raised by the dataset names its sample; samples of different sizes in one batch are a
``ValueError`` that names them; the first sample for the shared-memory estimate is read in a
worker process, and an ``IterableDataset`` is checked on its first batch, never read ahead.

Workers die for real here (they signal themselves). Stalls are sleeps of half a second against
a threshold of 0.05 s, so a warning is certain and the assertions do not depend on timing.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dinov2_heads.cache import FeatureStore, SharedMemoryError, WorkerDiedError, extract_features
from dinov2_heads.cache import loader_settings as settings_module
from dinov2_heads.cache import source as source_module
from dinov2_heads.cache.loader_settings import LoaderSettings, first_sample_bytes
from dinov2_heads.cache.manifest import read_manifest
from dinov2_heads.cache.shared_memory import SharedMemorySpace
from dinov2_heads.cache.source import MapSource, StreamSource, as_source
from dinov2_heads.cache.worker_death import WorkerDeath, dead_worker
from dinov2_heads.cli import main
from dinov2_heads.data import ImageFolderDataset
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.watchdog import WATCHDOG_THREAD_NAME
from tests.cache.conftest import (
    Batches,
    Files,
    Images,
    Samples,
    extract,
    layout_of,
    simulate_shared_memory,
)

KiB = 2**10

needs_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="workers killed by a signal: POSIX only"
)


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert len(a) == len(b)
    assert layout_of(a) == layout_of(b)
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WATCHDOG_THREAD_NAME]


def messages(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The watchdog's warnings."""
    return messages(caplog, "dinov2_heads.watchdog", logging.WARNING)


@pytest.fixture(scope="module")
def reference(frozen: FrozenBackbone) -> FeatureStore:
    return extract_features(frozen, Images(11), keep="patch_tokens", batch_size=3, progress=False)


# ---------------------------------------------------------------------- stalls


class SleepsOnce(Images):
    """:class:`Images` that sleeps ``delay`` seconds the first time it reads sample ``at`` (in
    each process: a worker has a copy of its own)."""

    def __init__(self, count: int, *, at: int, delay: float = 0.5) -> None:
        super().__init__(count)
        self.at = at
        self.delay = delay
        self.slept = False

    def __getitem__(self, index: int) -> Any:
        if index == self.at and not self.slept:
            self.slept = True
            time.sleep(self.delay)
        return super().__getitem__(index)


class SlowBackbone(nn.Module):
    """A frozen backbone whose second call takes ``delay`` seconds longer."""

    def __init__(self, frozen: FrozenBackbone, delay: float = 0.5) -> None:
        super().__init__()
        self.inner = frozen
        self.delay = delay
        self.calls = 0

    def forward(self, images: Tensor) -> Features:
        self.calls += 1
        if self.calls == 2:
            time.sleep(self.delay)
        features: Features = self.inner(images)
        return features


def extract_watched(frozen: nn.Module, data: Any, workers: int) -> FeatureStore:
    return extract_features(
        frozen, data, batch_size=3, num_workers=workers, progress=False, stall_warning=0.05
    )


def test_a_loader_stalled_in_this_process_is_named_with_the_line_it_is_at(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dinov2_heads"):
        store = extract_watched(frozen, SleepsOnce(9, at=4), 0)
    # The first batch through the backbone may take longer than 0.05 s too: the warning
    # for the loader is looked for among them.
    [stall] = [line for line in warned(caplog) if "waiting for the data" in line][:1]
    assert stall.startswith("no batch has come for 0.")
    assert "the extraction is waiting for the data, read in this process, now at " in stall
    assert f"{__file__}:" in stall
    assert "in __getitem__" in stall
    assert "a network file system" in stall
    assert any(
        line.startswith("a new batch came after")
        for line in messages(caplog, "dinov2_heads.watchdog", logging.INFO)
    )
    assert not watchdog_threads()
    unwatched = extract_features(
        frozen, Images(9), batch_size=3, num_workers=0, progress=False, stall_warning=None
    )
    assert_same_store(store, unwatched)


def test_a_stalled_worker_gets_a_warning_that_says_how_to_look_into_it(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        store = extract_watched(frozen, SleepsOnce(9, at=1), 2)
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert (
        "the extraction is waiting for the DataLoader, whose 2 worker processes have not "
        "handed over the next batch"
    ) in first
    assert "num_workers=0, --num-workers 0" in first
    assert f"listed by ps --ppid {os.getpid()}" in first
    assert "py-spy dump --pid PID" in first
    assert not watchdog_threads()
    assert_same_store(store, extract_features(frozen, Images(9), batch_size=3, progress=False))


def test_a_stalled_backbone_is_told_apart_from_the_loader(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    slow = SlowBackbone(frozen)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        store = extract_watched(slow, Images(9), 0)
    [first] = [line for line in warned(caplog) if f"now at {__file__}:" in line][:1]
    assert "the backbone has been working on the last one (and writing its features)" in first
    assert "in forward" in first
    assert not watchdog_threads()
    assert_same_store(store, extract_features(frozen, Images(9), batch_size=3, progress=False))


def test_the_watchdog_ends_with_an_extraction_that_fails(frozen: FrozenBackbone) -> None:
    with pytest.raises(RuntimeError, match="interrupted while reading sample 4"):
        extract_watched(frozen, Images(9, fail_at=4), 0)
    assert not watchdog_threads()
    with pytest.raises(ValueError, match="stall_warning must be a number of seconds > 0"):
        extract_features(frozen, Images(9), progress=False, stall_warning=0)


# ---------------------------------------------------------------------- workers that die


class DiesAt(Images):
    """:class:`Images` whose worker process, reading sample ``at``, dies: ``"kill"`` as the
    out-of-memory killer ends it (``SIGKILL``), ``"segv"`` crashed, ``"exit"`` with code 3."""

    def __init__(self, count: int, *, at: int, how: str) -> None:
        super().__init__(count)
        self.at = at
        self.how = how

    def __getitem__(self, index: int) -> Any:
        if index == self.at and get_worker_info() is not None:
            faulthandler.disable()  # pytest's would print a traceback first
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            os._exit(3)
        return super().__getitem__(index)


def causes(error: BaseException) -> str:
    text = []
    current: BaseException | None = error.__cause__
    while current is not None:
        text.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(text)


@needs_signals
def test_a_worker_killed_by_the_out_of_memory_killer_is_one_clear_error_and_resumes(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path
) -> None:
    arguments: dict[str, Any] = {"keep": "patch_tokens", "batch_size": 3, "progress": False}
    path = tmp_path / "store"
    with pytest.raises(WorkerDiedError) as caught:
        extract_features(
            frozen, DiesAt(11, at=7, how="kill"), path=path, num_workers=2, **arguments
        )
    message = str(caught.value)
    assert "\n" not in message  # one paragraph: the command line prints it whole
    assert message.startswith("a DataLoader worker process (pid ")
    assert (
        "was killed by signal SIGKILL (Killed) while reading the data with 2 worker processes "
        "and batches of 3 samples. The likeliest cause is memory"
    ) in message
    assert "the kernel's out-of-memory killer ended the process" in message
    assert "run the same extraction again to resume it" in message
    assert "fewer workers (num_workers=1; num_workers=0 reads in this process)" in message
    assert "a smaller batch_size" in message
    assert isinstance(caught.value, RuntimeError)  # as torch's error was
    assert "killed by signal: Killed" in causes(caught.value)
    partial = read_manifest(path)
    assert not partial.complete
    assert partial.written <= 6
    resumed = extract_features(frozen, Images(11), path=path, **arguments)
    assert resumed.complete
    assert_same_store(resumed, reference)


@needs_signals
@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("segv", "was killed by signal SIGSEGV (Segmentation fault) while reading the data"),
        ("exit", "exited with code 3 while reading the data"),
    ],
)
def test_a_worker_that_crashes_or_exits_is_named(
    frozen: FrozenBackbone, how: str, said: str
) -> None:
    with pytest.raises(WorkerDiedError) as caught:
        extract_features(
            frozen, DiesAt(9, at=4, how=how), batch_size=3, num_workers=2, progress=False
        )
    message = str(caught.value)
    assert said in message
    assert "num_workers=0" in message
    assert "run the same extraction again to resume it" in message


def test_a_worker_killed_while_the_backbone_runs_is_named_too() -> None:
    """torch's SIGCHLD handler raises wherever the main process is: in the backbone, too."""
    source = MapSource(Images(9), 9, 3, LoaderSettings(num_workers=2, prefetch_factor=2))
    body = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    failure = source_module.loader_failure(body, source)
    assert isinstance(failure, WorkerDiedError)
    assert str(failure).startswith(
        "a DataLoader worker process (pid 4242) was killed by signal SIGKILL (Killed) while "
        "reading the data with 2 worker processes and batches of 3 samples"
    )
    waiting = RuntimeError("DataLoader worker (pid(s) 4242, 4243) exited unexpectedly")
    assert dead_worker(waiting) == WorkerDeath((4242, 4243))
    waiting.__cause__ = body
    assert dead_worker(waiting) == WorkerDeath((4242,), signal=signal.SIGKILL)
    plain = source_module.loader_failure(
        RuntimeError("DataLoader worker (pid(s) 77) exited unexpectedly"), source
    )
    assert "(pid 77) ended unexpectedly" in str(plain)
    assert "The likeliest cause is memory" in str(plain)
    exited = RuntimeError(
        "DataLoader worker (pid 5) exited unexpectedly with exit code 1. Details are lost due "
        "to multiprocessing. Rerunning with num_workers=0 may give better error trace."
    )
    assert dead_worker(exited) == WorkerDeath((5,), exit_code=1)
    # Other errors, and a worker out of shared memory, are not worker deaths.
    for other in ("CUDA out of memory", "DataLoader timed out after 5 seconds"):
        assert source_module.loader_failure(RuntimeError(other), source) is None
    bus = RuntimeError("DataLoader worker (pid 9) is killed by signal: Bus error. ")
    assert isinstance(source_module.loader_failure(bus, source), SharedMemoryError)


@needs_signals
def test_the_command_line_says_a_killed_worker_in_one_line_and_resumes(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    read = ImageFolderDataset.__getitem__

    def killed_at_5(self: ImageFolderDataset, index: int) -> tuple[Tensor, int]:
        if index == 5 and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return read(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(ImageFolderDataset, "__getitem__", killed_at_5)
        assert extract(files, tmp_path / "store", "--num-workers", "2") == 1
    error = capsys.readouterr().err
    [line] = [line for line in error.splitlines() if line.startswith("dinov2-heads extract")]
    assert line.startswith("dinov2-heads extract: error: a DataLoader worker process (pid ")
    assert "was killed by signal SIGKILL (Killed)" in line
    assert "out-of-memory killer" in line
    assert "fewer workers (--num-workers 1; --num-workers 0 reads in this process)" in line
    assert "a smaller --batch-size" in line
    assert "Traceback" not in error

    assert extract(files, tmp_path / "store", "--num-workers", "2") == 0
    assert extract(files, tmp_path / "whole", "--num-workers", "0", "--stall-warning", "0") == 0
    assert_same_store(FeatureStore.open(tmp_path / "store"), FeatureStore.open(tmp_path / "whole"))


def test_the_stall_warning_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["extract", "--checkpoint", "x.pth", "--out", "o", "--stall-warning", "-1", "i"])
    assert "expected seconds >= 0 (0: never), got '-1'" in capsys.readouterr().err


# ---------------------------------------------------------------------- errors reading


class FailsAt(Images):
    def __getitem__(self, index: int) -> Any:
        if index == 5:
            raise KeyError(f"no annotation for sample {index}")
        return super().__getitem__(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_in_the_dataset_is_raised_as_it_was_and_names_its_sample(
    frozen: FrozenBackbone, workers: int
) -> None:
    with pytest.raises(KeyError) as caught:
        extract_features(frozen, FailsAt(9), batch_size=3, num_workers=workers, progress=False)
    assert type(caught.value) is KeyError
    assert str(caught.value) == "'no annotation for sample 5'"
    if sys.version_info >= (3, 11):
        where = " in a DataLoader worker process" if workers else ""
        notes = caught.value.__notes__
        assert notes[0] == f"(while reading sample 5 of the data{where})"
        if workers:  # the worker's traceback, which torch's own report also carries
            assert notes[1].startswith("The worker's traceback:\nTraceback (most recent call")
            assert f'File "{__file__}", line' in notes[1]
            assert notes[1].endswith("KeyError: 'no annotation for sample 5'")
        else:  # here, the error's own traceback reaches into the dataset
            assert len(notes) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_of_different_sizes_in_one_batch_are_named(
    frozen: FrozenBackbone, workers: int
) -> None:
    images = Images(9)
    items = [(images.image(i) if i != 4 else torch.zeros(3, 28, 56), i % 3) for i in range(9)]
    with pytest.raises(ValueError, match="cannot be stacked") as caught:
        extract_features(frozen, Samples(items), batch_size=3, num_workers=workers, progress=False)
    message = str(caught.value)
    assert message.startswith(
        "samples 3 to 5 cannot be stacked into one batch: stack expects each tensor to be "
        "equal size, but got [3, 28, 42] at entry 0 and [3, 28, 56] at entry 1."
    )
    assert "give the dataset a transform with a fixed output size" in message
    assert "Caught" not in message


# ---------------------------------------------------------------------- measuring the data


class OpensOnFirstRead(Images):
    """Opens its file on first read, as an HDF5, LMDB or zip dataset should: each process its
    own handle (a handle opened before the workers fork is shared by all of them)."""

    reads_image_files = True  # "auto" gives it workers

    def __init__(self, path: Path, count: int) -> None:
        super().__init__(count)
        self.path = path
        self.handle: Any = None

    def __getitem__(self, index: int) -> Any:
        if self.handle is None:
            self.handle = self.path.open("rb")
        return super().__getitem__(index)


def test_the_first_sample_is_measured_in_a_worker_leaving_this_process_alone(
    frozen: FrozenBackbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    archive = tmp_path / "archive.bin"
    archive.write_bytes(b"\0" * 64)
    data = OpensOnFirstRead(archive, 12)
    sample = 3 * 28 * 42 * 4 + 8  # a float32 image and an int label
    # Room for one worker's 3 batches of 4 in flight, not for two workers' 5.
    room = SharedMemorySpace("/dev/shm", 4 * 2**20, int(3 * 4 * sample / 0.75) + 1)
    simulate_shared_memory(monkeypatch, room)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 3)  # "auto": 2 workers
    generator = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        source = as_source(data, 4, "auto")
    assert source.num_workers == 1  # the size was measured ...
    assert "Reading with 1 DataLoader worker instead" in caplog.text
    assert data.handle is None  # ... in a worker: this process opened nothing
    assert data.reads == []
    assert torch.equal(torch.get_rng_state(), generator)  # and drew no random number
    store = extract_features(frozen, data, batch_size=4, progress=False)
    assert data.handle is None  # the workers opened their own
    in_process = extract_features(frozen, Images(12), batch_size=4, num_workers=0, progress=False)
    assert_same_store(store, in_process)


def test_a_first_sample_that_does_not_come_is_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        assert first_sample_bytes(SleepsOnce(3, at=0, delay=0.5), timeout=0.1) == 0
    assert "reading the first sample took more than 0.1 s" in caplog.text
    assert first_sample_bytes(FailsAt(9)) > 0  # sample 0 reads fine
    assert first_sample_bytes(Images(0)) == 0


class Stream(IterableDataset[Any]):
    """``count`` images with labels, all from the first worker; counts its iterations."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.iterations = 0

    def __iter__(self) -> Iterator[Any]:
        self.iterations += 1
        info = get_worker_info()
        if info is not None and info.id > 0:
            return iter(())
        images = Images(self.count)
        return ((images.image(index), index % 3) for index in range(self.count))


def test_an_iterable_with_workers_is_checked_on_its_first_batch_and_never_read_ahead(
    frozen: FrozenBackbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    simulate_shared_memory(monkeypatch, SharedMemorySpace("/dev/shm", 2**20, 100 * KiB))
    stream = Stream(9)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        source = as_source(stream, 3, 2)
        assert isinstance(source, StreamSource)
        assert not caplog.records  # nothing read yet
        store = extract_features(frozen, stream, batch_size=3, num_workers=2, progress=False)
        loader = DataLoader(Stream(9), batch_size=3, num_workers=2)
        extract_features(frozen, loader, progress=False)
    assert stream.iterations == 0  # only the workers' copies were read
    asked, given = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    batch = 3 * (3 * 28 * 42 * 4 + 8)
    assert (
        f"2 DataLoader workers, which keep up to 5 batches of 3 samples ({batch / KiB:.1f} KiB each"
        in asked
    )
    assert "/dev/shm has 100.0 KiB free" in asked
    assert "Keeping the 2 workers as asked" in asked
    assert "as the DataLoader has them" in given
    assert_same_store(store, extract_features(frozen, Images(9), batch_size=3, progress=False))


class FailsInItsShare(IterableDataset[Any]):
    """12 images with labels, split between the workers by index (worker ``w`` of ``n`` yields
    ``w, w + n, ...``); reading image ``at`` raises ``error``."""

    def __init__(self, *, at: int = 7, error: type[Exception] = KeyError) -> None:
        self.at = at
        self.error = error

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        images = Images(12)
        for index in range(worker, 12, workers):
            if index == self.at:
                raise self.error(f"no annotation for image {index}")
            yield images.image(index), index % 3


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = threading.Lock()  # cannot travel from a worker process


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("own_loader", [False, True])
def test_an_error_in_an_iterable_dataset_names_the_worker_and_the_item(
    frozen: FrozenBackbone, workers: int, own_loader: bool
) -> None:
    data: Any = FailsInItsShare()
    if own_loader:  # drop_last drops short batches, not the short batch that holds the error
        data = DataLoader(data, batch_size=5, drop_last=True, num_workers=workers)
    with pytest.raises(KeyError) as caught:
        extract_features(frozen, data, batch_size=2, num_workers=workers, progress=False)
    assert type(caught.value) is KeyError
    assert str(caught.value) == "'no annotation for image 7'"
    if sys.version_info < (3, 11):
        return
    notes = caught.value.__notes__
    if workers == 0:
        assert notes == [
            "(while reading item 7 (counted from 0) of the IterableDataset; fix or skip that "
            "item where its __iter__ yields it)"
        ]
        return
    # Worker 1 of 2 yields images 1, 3, 5, 7: image 7 is item 3 of its share.
    assert notes[0] == (
        "(while reading item 3 (counted from 0) of the share of DataLoader worker 1 of 2: the "
        "items the IterableDataset's __iter__ yields where get_worker_info().id == 1, not the "
        "whole stream; fix or skip that item there, or read with num_workers=0 to raise it in "
        "this process with its whole traceback)"
    )
    assert notes[1].startswith("The worker's traceback:\nTraceback (most recent call")
    assert f'File "{__file__}", line' in notes[1]
    assert notes[1].endswith("KeyError: 'no annotation for image 7'")
    assert "Caught" not in str(caught.value)


def test_an_error_from_a_worker_that_cannot_travel_keeps_its_type_in_its_message(
    frozen: FrozenBackbone,
) -> None:
    data = FailsInItsShare(at=2, error=Unpicklable)
    with pytest.raises(RuntimeError) as caught:
        extract_features(frozen, data, batch_size=2, num_workers=2, progress=False)
    assert str(caught.value) == "Unpicklable: no annotation for image 2"
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__[0].startswith(
            "(while reading item 1 (counted from 0) of the share of DataLoader worker 0 of 2"
        )


class Unrebuildable(Exception):
    """Pickles, but unpickling calls ``__init__`` with the message alone, and fails."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


class FailsUnrebuildably(Images):
    def __getitem__(self, index: int) -> Any:
        if index == 4:
            raise Unrebuildable(f"image{index}.png", "no annotation")
        return super().__getitem__(index)


def test_an_error_from_a_worker_that_pickles_but_cannot_be_rebuilt_keeps_its_message(
    frozen: FrozenBackbone,
) -> None:
    # Not torch's TypeError about missing arguments, raised while unpickling the batch.
    with pytest.raises(RuntimeError) as caught:
        extract_features(frozen, FailsUnrebuildably(9), batch_size=3, num_workers=2, progress=False)
    assert str(caught.value) == "Unrebuildable: image4.png: no annotation"
    if sys.version_info >= (3, 11):
        notes = caught.value.__notes__
        assert notes[0] == "(while reading sample 4 of the data in a DataLoader worker process)"
        assert notes[1].endswith("Unrebuildable: image4.png: no annotation")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_iterable_read_through_the_reporting_loader_gives_the_same_store(
    frozen: FrozenBackbone, workers: int
) -> None:
    # Nothing fails: drop_last still drops each worker's short last batch, and unbatched
    # loaders (batch_size=None) hand their batches over as they are.
    images = Images(12)
    kept = DataLoader(FailsInItsShare(at=-1), batch_size=4, drop_last=True, num_workers=workers)
    store = extract_features(frozen, kept, keep="patch_tokens", progress=False)
    # Two workers each yield 6 images: one batch of 4 each (worker 0's first), 2 dropped each.
    order = [0, 2, 4, 6, 1, 3, 5, 7] if workers else list(range(12))
    expected = extract_features(
        frozen,
        Samples([(images.image(i), i % 3) for i in order]),
        keep="patch_tokens",
        batch_size=4,
        progress=False,
    )
    assert_same_store(store, expected)
    batches = Batches(
        lambda: iter([(torch.stack([images.image(i) for i in order]), torch.tensor(order) % 3)])
    )
    unbatched = DataLoader(batches, batch_size=None, num_workers=min(workers, 1))
    assert_same_store(
        extract_features(frozen, unbatched, keep="patch_tokens", progress=False), expected
    )
