"""DataLoader workers and shared memory: workers that fit ``/dev/shm``, a warning where they
may not, and a clear, resumable error when a worker runs out all the same.

``/dev/shm`` is simulated (``shared_memory_space`` replaced where it is called): nothing here
depends on the machine's. Workers that die do so for real (a bus error in the worker, torch's
own errors from a worker's collate function), so the errors come through torch's own code
paths.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from dinov2_heads.cache import FeatureStore, SharedMemoryError, extract_features
from dinov2_heads.cache import loader_settings as settings_module
from dinov2_heads.cache.loader_settings import PREFETCH_FACTOR, LoaderSettings, fit_shared_memory
from dinov2_heads.cache.manifest import read_manifest
from dinov2_heads.cache.shared_memory import (
    SHARED_MEMORY_SHARE,
    SharedMemorySpace,
    in_flight_batches,
    is_shared_memory_error,
    sample_bytes,
    shared_memory_error,
    shared_memory_space,
    suggested_shm_size,
    workers_that_fit,
)
from dinov2_heads.cache.source import MapSource, StreamSource, as_source
from dinov2_heads.cache.worker_death import worker_death_of
from dinov2_heads.data import ImageFolderDataset, Preprocess
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Files, Images, extract, layout_of, simulate_shared_memory

MiB = 2**20
GiB = 2**30
DOCKER_SHM = SharedMemorySpace("/dev/shm", 64 * MiB, 64 * MiB)

#: torch's messages for a worker out of shared memory (torch/csrc/DataLoader.cpp and
#: aten/src/ATen/MapAllocator.cpp), as the main process sees them.
BUS_ERROR = (
    "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that "
    "dataloader's workers are out of shared memory. Please try to raise your shared memory "
    "limit."
)
WRITE_FAILED = "unable to write to file </torch_4242_1897368512_0>: No space left on device (28)"
ALLOCATE_FAILED = (
    "unable to allocate shared memory(shm) for file </torch_4242_1897368512_1>: No space left "
    "on device (28)"
)
TORCH_MESSAGES = (BUS_ERROR, WRITE_FAILED, ALLOCATE_FAILED)

needs_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="torch reports dead workers by SIGCHLD off Windows only"
)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------------- measuring


def test_the_space_is_read_from_the_file_system(tmp_path: Path) -> None:
    def statvfs(path: str) -> os.statvfs_result:
        assert path == str(tmp_path)
        # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
        return os.statvfs_result((4096, 4096, 16384, 15000, 12288, 0, 0, 0, 0, 255))

    space = shared_memory_space(tmp_path, statvfs=statvfs)
    assert space == SharedMemorySpace(str(tmp_path), 64 * MiB, 48 * MiB)


@pytest.mark.skipif(not hasattr(os, "statvfs"), reason="no statvfs on this system")
def test_the_space_of_a_real_folder_is_what_statvfs_says(tmp_path: Path) -> None:
    space = shared_memory_space(tmp_path)
    stats = os.statvfs(tmp_path)
    assert space is not None
    assert space.size == stats.f_blocks * stats.f_frsize
    assert 0 <= space.free <= space.size


def test_no_shared_memory_file_system_means_no_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shared_memory_space(tmp_path / "absent") is None  # macOS has no /dev/shm

    def unreadable(path: str) -> Any:
        raise PermissionError(13, "Permission denied", path)

    assert shared_memory_space(tmp_path, statvfs=unreadable) is None
    monkeypatch.delattr(os, "statvfs", raising=False)  # Windows
    assert shared_memory_space(tmp_path) is None
    # Nothing to check against: the workers are kept as chosen.
    settings = LoaderSettings(num_workers=7, prefetch_factor=PREFETCH_FACTOR)
    assert (
        fit_shared_memory(settings, batch_bytes=GiB, batch_size=256, space=None, chosen="auto")
        == settings
    )


def test_a_samples_bytes_follow_its_dtype() -> None:
    float_image = torch.zeros(3, 224, 224)
    assert sample_bytes(float_image) == 3 * 224 * 224 * 4
    assert sample_bytes(float_image.to(torch.uint8)) == 3 * 224 * 224  # a quarter
    assert sample_bytes((float_image, 5)) == 3 * 224 * 224 * 4 + 8
    labels = {"colour": 1, "mask": torch.zeros(224, 224, dtype=torch.uint8)}
    assert sample_bytes([float_image, labels, "car_0001.jpg"]) == 602112 + 8 + 224 * 224
    assert sample_bytes(np.zeros((3, 8, 8), dtype=np.float64)) == 3 * 8 * 8 * 8


def test_the_workers_that_fit() -> None:
    assert in_flight_batches(0, 2) == 0
    assert in_flight_batches(7, 2) == 15  # two ahead per worker and the one in use
    # Docker's 64 MiB against a batch of 256 float32 images of 224x224 (147 MiB).
    batch = 256 * 3 * 224 * 224 * 4
    assert workers_that_fit(7, prefetch_factor=2, batch_bytes=batch, free=64 * MiB) == 0
    # 4000 bytes free: 3000 may be used; 2 workers keep 5 batches of 600 bytes.
    assert workers_that_fit(7, prefetch_factor=2, batch_bytes=600, free=4000) == 2
    assert workers_that_fit(7, prefetch_factor=2, batch_bytes=601, free=4000) == 1
    assert workers_that_fit(2, prefetch_factor=2, batch_bytes=1, free=GiB) == 2  # never more
    assert workers_that_fit(7, prefetch_factor=4, batch_bytes=600, free=4000) == 1


def test_the_suggested_shm_size_holds_the_workers() -> None:
    assert suggested_shm_size(1) == "1g"
    assert suggested_shm_size(int(GiB * SHARED_MEMORY_SHARE)) == "1g"
    assert suggested_shm_size(int(GiB * SHARED_MEMORY_SHARE) + 1) == "2g"
    for workers, batch in [(7, 256 * 602112), (15, 64 * 602112), (3, 64 * 150528)]:
        needed = in_flight_batches(workers, 2) * batch
        size = int(suggested_shm_size(needed)[:-1]) * GiB
        assert workers_that_fit(workers, prefetch_factor=2, batch_bytes=batch, free=size) == (
            workers
        )


# ---------------------------------------------------------------------- deciding


def test_auto_reads_in_the_main_process_when_no_worker_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = LoaderSettings(num_workers=7, pin_memory=True, prefetch_factor=PREFETCH_FACTOR)
    batch = 256 * 3 * 224 * 224 * 4
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        fitted = fit_shared_memory(
            settings, batch_bytes=batch, batch_size=256, space=DOCKER_SHM, chosen="auto"
        )
    assert fitted == LoaderSettings()  # no workers, nothing pinned, no prefetching
    [line] = warnings_of(caplog)
    assert "/dev/shm has 64.0 MiB free of 64.0 MiB" in line
    assert (
        "7 DataLoader workers, which keep up to 15 batches of 256 samples (147.0 MiB each" in line
    )
    assert "Reading with no workers (in the main process) instead, which is slower" in line
    assert "docker run --shm-size=3g" in line
    assert "smaller batch size" in line


def test_auto_keeps_the_workers_that_fit(caplog: pytest.LogCaptureFixture) -> None:
    settings = LoaderSettings(num_workers=7, pin_memory=True, prefetch_factor=PREFETCH_FACTOR)
    space = SharedMemorySpace("/dev/shm", 128 * MiB, 100 * MiB)  # 75 MiB for batches
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        fitted = fit_shared_memory(
            settings, batch_bytes=10 * MiB, batch_size=64, space=space, chosen="auto"
        )
    assert fitted == LoaderSettings(num_workers=3, pin_memory=True, prefetch_factor=2)
    [line] = warnings_of(caplog)
    assert "Reading with 3 DataLoader workers instead" in line
    assert "for all 7 workers, give the container more shared memory" in line

    # Four processes under torchrun share the machine's /dev/shm: one worker each.
    shared = fit_shared_memory(
        settings, batch_bytes=10 * MiB, batch_size=64, space=space, chosen="auto", processes=4
    )
    assert shared.num_workers == 0
    caplog.clear()
    roomy = SharedMemorySpace("/dev/shm", 2 * GiB, 2 * GiB)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        kept = fit_shared_memory(
            settings, batch_bytes=10 * MiB, batch_size=64, space=roomy, chosen="auto"
        )
    assert kept == settings
    assert not warnings_of(caplog)


@pytest.mark.parametrize("chosen", ["asked", "loader"])
def test_explicit_workers_are_kept_with_a_warning(
    chosen: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = LoaderSettings(num_workers=4, prefetch_factor=2)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        kept = fit_shared_memory(
            settings, batch_bytes=37 * MiB, batch_size=64, space=DOCKER_SHM, chosen=chosen
        )
    assert kept == settings
    [line] = warnings_of(caplog)
    assert (
        "4 DataLoader workers, which keep up to 9 batches of 64 samples (37.0 MiB each, 333.0 MiB"
        in (line)
    )
    assert "/dev/shm has 64.0 MiB free of 64.0 MiB" in line
    assert "bus error" in line
    assert "docker run --shm-size=1g" in line
    assert ("as asked" if chosen == "asked" else "as the DataLoader has them") in line


class FileLikeImages(Dataset[Any]):
    """Images of one dtype, read "from files" (so ``"auto"`` gives it workers)."""

    reads_image_files: ClassVar[bool] = True

    def __init__(self, count: int, dtype: torch.dtype) -> None:
        self.count = count
        self.dtype = dtype
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        self.reads.append(index)
        return torch.zeros(3, 224, 224, dtype=self.dtype), index % 3


def test_as_source_measures_the_first_sample_in_its_own_dtype(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 8)  # "auto": 7 workers
    # 64 float32 images of 224x224 with labels: 36.75 MiB a batch. 40 MiB free (30 usable)
    # hold no float32 batches in flight, but 3 uint8 batches (9.2 MiB each): one worker.
    simulate_shared_memory(monkeypatch, SharedMemorySpace("/dev/shm", 64 * MiB, 40 * MiB))
    as_float = FileLikeImages(640, torch.float32)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        source = as_source(as_float, 64, "auto")
    assert isinstance(source, MapSource)
    assert source.num_workers == 0
    # Measured on the first sample, read in a worker process: this one's dataset is untouched.
    assert as_float.reads == []
    assert "batches of 64 samples (36.8 MiB each" in warnings_of(caplog)[0]
    as_uint8 = as_source(FileLikeImages(640, torch.uint8), 64, "auto")
    assert as_uint8.num_workers == 1  # type: ignore[union-attr]

    # An explicit count is kept; the user's DataLoader too. Both get the warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        asked = as_source(as_float, 64, 3)
        loader = DataLoader(as_float, batch_size=64, num_workers=2, prefetch_factor=4)
        given = as_source(loader, 16, "auto")
    assert asked.num_workers == 3  # type: ignore[union-attr]
    assert given.num_workers == 2  # type: ignore[union-attr]
    assert given.loader.prefetch_factor == 4  # type: ignore[union-attr]
    assert loader.num_workers == 2
    asked_line, loader_line = warnings_of(caplog)
    assert "3 DataLoader workers, which keep up to 7 batches" in asked_line
    assert "Keeping the 3 workers as asked" in asked_line
    assert "2 DataLoader workers, which keep up to 9 batches" in loader_line
    assert "as the DataLoader has them" in loader_line

    # A DataLoader with its own batch sampler is read as a stream, and checked the same way.
    caplog.clear()
    sampler = BatchSampler(SequentialSampler(as_float), batch_size=32, drop_last=False)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        stream = as_source(DataLoader(as_float, batch_sampler=sampler, num_workers=1), 16, 0)
    assert isinstance(stream, StreamSource)
    [stream_line] = warnings_of(caplog)
    assert "1 DataLoader worker, which keeps up to 3 batches of 32 samples (18.4 MiB each" in (
        stream_line
    )


def test_no_workers_no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    data = FileLikeImages(64, torch.float32)
    source = as_source(data, 64, 0)
    assert source.num_workers == 0  # type: ignore[union-attr]
    assert data.reads == []  # nothing to measure


# ---------------------------------------------------------------------- extracting


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vehicles") / "folder"
    SyntheticVehicles(10, seed=0, num_brands=2).write_folder(root, label="body")
    return root


def test_extraction_with_too_little_shared_memory_runs_with_fewer_workers(
    folder: Path,
    frozen: FrozenBackbone,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 3)  # "auto": 2 workers
    dataset = ImageFolderDataset(folder, Preprocess(resize=(28, 42)))
    image, _ = dataset[0]
    batch = 4 * (image.nbytes + 8)
    # Room for one worker's 3 batches in flight, not for two workers' 5.
    simulate_shared_memory(
        monkeypatch, SharedMemorySpace("/dev/shm", 4 * MiB, int(3 * batch / 0.75) + 1)
    )
    assert as_source(dataset, 4, "auto").num_workers == 1  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        fewer = extract_features(frozen, dataset, batch_size=4, progress=False)
    assert any("Reading with 1 DataLoader worker instead" in line for line in warnings_of(caplog))
    in_process = extract_features(frozen, dataset, batch_size=4, num_workers=0, progress=False)
    for name in fewer.layout.arrays:
        assert torch.equal(fewer.array(name), in_process.array(name)), name


class RunsOut(Images):
    """:class:`Images` whose sample ``fail_at`` fails as a worker out of shared memory does.

    ``how="raise"`` raises torch's ``message`` (in a worker or in the main process);
    ``how="bus"`` kills the worker that reads it with ``SIGBUS``, as writing to a full
    ``/dev/shm`` does.
    """

    def __init__(self, count: int, *, fail_at: int, message: str = "", how: str = "raise"):
        super().__init__(count)
        self.runs_out_at = fail_at
        self.message = message
        self.how = how

    def __getitem__(self, index: int) -> Any:
        if index == self.runs_out_at:
            if self.how == "bus":
                if get_worker_info() is None:
                    raise AssertionError("only a worker may be killed here")
                os.kill(os.getpid(), signal.SIGBUS)
            raise RuntimeError(self.message)
        return super().__getitem__(index)


@dataclass(frozen=True)
class Run:
    data: Dataset[Any] | DataLoader[Any]
    num_workers: int | str = 0


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert len(a) == len(b)
    assert layout_of(a) == layout_of(b)
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


def fails_then_resumes(
    frozen: FrozenBackbone, path: Path, failing: Run, reference: FeatureStore
) -> SharedMemoryError:
    """Run ``failing`` into ``path`` (it must fail), resume it, compare with ``reference``."""
    arguments: dict[str, Any] = {"keep": "patch_tokens", "batch_size": 3, "progress": False}
    with pytest.raises(SharedMemoryError) as caught:
        extract_features(
            frozen, failing.data, path=path, num_workers=failing.num_workers, **arguments
        )
    # The batches before sample 7's, those that were done: with workers, maybe none.
    partial = read_manifest(path)
    assert not partial.complete
    assert partial.written <= 6
    resumed = extract_features(frozen, Images(11), path=path, **arguments)
    assert resumed.complete
    assert_same_store(resumed, reference)
    return caught.value


@pytest.fixture(scope="module")
def reference(frozen: FrozenBackbone) -> FeatureStore:
    return extract_features(frozen, Images(11), keep="patch_tokens", batch_size=3, progress=False)


def assert_explains(error: SharedMemoryError, torch_line: str) -> None:
    message = str(error)
    assert "\n" not in message  # one paragraph: the command line prints it whole
    assert message.startswith("the DataLoader ran out of shared memory")
    assert "/dev/shm (64.0 MiB, 64.0 MiB free now)" in message
    assert torch_line in message
    assert "run the same extraction again to resume it" in message
    assert "num_workers=0" in message
    assert "docker run --shm-size=2g" in message
    assert "a smaller batch_size" in message
    assert isinstance(error, RuntimeError)  # as torch's error was
    assert isinstance(error, OSError)
    assert isinstance(error.__cause__, RuntimeError)


@pytest.mark.parametrize("message", TORCH_MESSAGES)
def test_a_dataset_out_of_shared_memory_fails_clearly_and_resumes(
    frozen: FrozenBackbone,
    reference: FeatureStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
) -> None:
    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    error = fails_then_resumes(
        frozen, tmp_path / "store", Run(RunsOut(11, fail_at=7, message=message)), reference
    )
    assert_explains(error, message)
    assert "with 0 worker processes and batches of 3 samples" in str(error)
    assert str(error.__cause__) == message


@needs_signals
def test_a_worker_killed_by_a_bus_error_fails_clearly_and_resumes(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    failing = Run(RunsOut(11, fail_at=7, how="bus"), num_workers=2)
    error = fails_then_resumes(frozen, tmp_path / "store", failing, reference)
    assert_explains(error, "is killed by signal: Bus error")
    assert "with 2 worker processes and batches of 3 samples" in str(error)


def test_a_worker_whose_batch_finds_no_shared_memory_fails_clearly_and_resumes(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's collate function fails to allocate the batch in shared memory (where
    ``default_collate`` puts it in a worker): its error comes back as it was raised, with a
    note naming the samples, rather than as torch's "Caught RuntimeError in DataLoader worker
    process 0"."""

    calls: list[int] = []  # in the worker process: its batches, in order

    def collate(items: list[Any]) -> Any:
        calls.append(len(items))
        if len(calls) == 3:  # samples 6, 7 and 8
            raise RuntimeError(ALLOCATE_FAILED)
        return default_collate(items)

    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    loader = DataLoader(Images(11), batch_size=3, num_workers=1, collate_fn=collate)
    error = fails_then_resumes(frozen, tmp_path / "store", Run(loader), reference)
    assert_explains(error, ALLOCATE_FAILED)
    assert str(error.__cause__) == ALLOCATE_FAILED
    if sys.version_info >= (3, 11):
        sample, trace = error.__cause__.__notes__
        assert sample == "(while making one batch of samples 6 to 8 in a DataLoader worker process)"
        assert trace.startswith("The worker's traceback:")
        assert "in collate" in trace


def test_other_errors_pass_as_they_are(
    frozen: FrozenBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    disk_full = "[Errno 28] No space left on device: '/data/features/labels.bin'"
    with pytest.raises(RuntimeError) as caught:
        extract_features(
            frozen, RunsOut(6, fail_at=4, message=disk_full), batch_size=3, progress=False
        )
    assert type(caught.value) is RuntimeError
    assert str(caught.value) == disk_full
    # A worker that exited for another reason (a segmentation fault, the OOM killer).
    assert not is_shared_memory_error(
        RuntimeError("DataLoader worker (pid(s) 7) exited unexpectedly")
    )
    died = RuntimeError("DataLoader worker (pid(s) 7) exited unexpectedly")
    died.__cause__ = RuntimeError(BUS_ERROR)
    assert is_shared_memory_error(died)


def test_the_message_without_a_shared_memory_file_system() -> None:
    error = shared_memory_error(
        RuntimeError(WRITE_FAILED), workers=None, batch_size=None, space=None
    )
    assert str(error).startswith(
        f"the DataLoader ran out of shared memory ({WRITE_FAILED}): its workers hand every "
        "batch to this process through shared memory. The batches finished before are kept"
    )


def _die_of_a_bus_error() -> None:
    faulthandler.disable()  # pytest's would print a traceback first
    os.kill(os.getpid(), signal.SIGBUS)


@needs_signals
def test_a_worker_dead_of_a_bus_error_is_named_whatever_torch_said() -> None:
    """The main process may lose a dying worker's connection before torch notices its death."""
    worker = multiprocessing.get_context().Process(target=_die_of_a_bus_error)
    worker.start()
    lost = ConnectionResetError(104, "Connection reset by peer")
    killed = worker_death_of([worker], lost, wait=30.0)
    assert isinstance(killed, RuntimeError)
    assert str(killed) == (
        f"DataLoader worker (pid {worker.pid}) was killed by signal: Bus error (SIGBUS)"
    )
    assert is_shared_memory_error(killed)
    gone = RuntimeError(f"DataLoader worker (pid(s) {worker.pid}) exited unexpectedly")
    assert worker_death_of([worker], gone) is not None
    # Errors a worker raised itself, torch's own shared-memory reports and healthy workers
    # are left as they are.
    handed_over = OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback")
    assert worker_death_of([worker], handed_over) is None
    assert worker_death_of([worker], RuntimeError("CUDA out of memory")) is None
    assert worker_death_of([worker], RuntimeError(BUS_ERROR)) is None
    alive = multiprocessing.get_context().Process(target=signal.pause)
    alive.start()
    try:
        assert worker_death_of([alive], lost, wait=0.1) is None
    finally:
        alive.kill()
        alive.join()


# ---------------------------------------------------------------------- the command line


@needs_signals
def test_the_command_line_says_what_to_do_in_one_line_and_resumes(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulate_shared_memory(monkeypatch, DOCKER_SHM)
    read = ImageFolderDataset.__getitem__

    def bus_error_at_5(self: ImageFolderDataset, index: int) -> tuple[Tensor, int]:
        if index == 5 and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGBUS)
        return read(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(ImageFolderDataset, "__getitem__", bus_error_at_5)
        assert extract(files, tmp_path / "store", "--num-workers", "2") == 1
    error = capsys.readouterr().err
    [line] = [line for line in error.splitlines() if line.startswith("dinov2-heads extract")]
    assert line.startswith("dinov2-heads extract: error: the DataLoader ran out of shared memory")
    assert "killed by signal: Bus error" in line
    assert "/dev/shm (64.0 MiB" in line
    assert "--num-workers 0" in line
    assert "docker run --shm-size=2g" in line
    assert "a smaller --batch-size" in line
    assert "Traceback" not in error

    assert extract(files, tmp_path / "store", "--num-workers", "2") == 0
    assert extract(files, tmp_path / "whole", "--num-workers", "0") == 0
    assert_same_store(FeatureStore.open(tmp_path / "store"), FeatureStore.open(tmp_path / "whole"))


def test_the_command_line_warns_and_reads_with_fewer_workers(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 4)
    simulate_shared_memory(monkeypatch, SharedMemorySpace("/dev/shm", 64 * MiB, 16 * 1024))
    with caplog.at_level(logging.WARNING, logger="dinov2_heads"):
        assert extract(files, tmp_path / "auto") == 0
        assert extract(files, tmp_path / "asked", "--num-workers", "2") == 0
    auto, asked = warnings_of(caplog)
    assert "/dev/shm has 16.0 KiB free" in auto
    assert "Reading with no workers (in the main process) instead" in auto
    assert "Keeping the 2 workers as asked" in asked
    assert_same_store(FeatureStore.open(tmp_path / "auto"), FeatureStore.open(tmp_path / "asked"))
