"""How an extraction reads its data: workers, pinned memory and prefetching by default, a
user's DataLoader as it is, and the same features whichever way the samples were read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset, Subset

from dinov2_heads.cache import extract_features
from dinov2_heads.cache import loader_settings as settings_module
from dinov2_heads.cache.loader_settings import (
    MAX_AUTO_WORKERS,
    PREFETCH_FACTOR,
    LoaderSettings,
    available_cpus,
    loader_settings,
    reads_image_files,
)
from dinov2_heads.cache.source import MapSource, StreamSource, as_source
from dinov2_heads.data import ImageFolderDataset, Preprocess
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only named: nothing here runs on it


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vehicles") / "folder"
    SyntheticVehicles(10, seed=0, num_brands=2).write_folder(root, label="body")
    return root


def test_auto_gives_workers_by_cpus_to_datasets_that_read_files() -> None:
    for cpus, batches, workers in [
        (2, 10, 1),  # one CPU is left to the process that runs the backbone
        (8, 10, 7),
        (8, 3, 3),  # never more workers than batches
        (64, 1000, MAX_AUTO_WORKERS),
        (1, 10, 0),  # nothing to overlap with
        (8, 1, 0),  # one batch: a worker would only add its start-up
    ]:
        settings = loader_settings("auto", data="files", batches=batches, device=CPU, cpus=cpus)
        assert settings.num_workers == workers, (cpus, batches)
        assert settings.prefetch_factor == (PREFETCH_FACTOR if workers else None)
        assert settings.pin_memory is False  # a CPU backbone


def test_auto_gives_no_workers_to_other_data() -> None:
    for kind in ("tensors", "other"):
        settings = loader_settings("auto", data=kind, batches=100, device=CUDA, cpus=16)
        assert settings == LoaderSettings(), kind


def test_explicit_worker_counts_win() -> None:
    for kind in ("files", "other"):
        settings = loader_settings(3, data=kind, batches=100, device=CPU, cpus=64)
        assert settings.num_workers == 3
        assert loader_settings(0, data=kind, batches=100, device=CUDA, cpus=64) == LoaderSettings()
    # Images already in memory are read in the main process, as before.
    assert loader_settings(3, data="tensors", batches=100, device=CPU).num_workers == 0


def test_memory_is_pinned_only_for_a_cuda_backbone_fed_by_workers() -> None:
    cuda_files = loader_settings("auto", data="files", batches=10, device=CUDA, cpus=4)
    assert (cuda_files.num_workers, cuda_files.pin_memory) == (3, True)
    assert loader_settings(2, data="other", batches=10, device=CUDA).pin_memory
    assert not loader_settings(2, data="other", batches=10, device=CPU).pin_memory
    assert not loader_settings("auto", data="files", batches=10, device=CUDA, cpus=1).pin_memory


@pytest.mark.parametrize("bad", [-1, 1.5, True, "all", None])
def test_a_bad_worker_count_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"num_workers must be 'auto' or a whole number >= 0"):
        loader_settings(bad, data="files", batches=10, device=CPU)
    with pytest.raises(ValueError, match=r"num_workers must be 'auto'"):
        as_source(Images(4), 2, bad)


def test_available_cpus_follows_the_affinity_and_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert available_cpus() == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes share this machine's CPUs
    assert available_cpus() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "24")
    assert available_cpus() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert available_cpus() == 6


def test_datasets_that_read_files_are_recognised(folder: Path) -> None:
    dataset = ImageFolderDataset(folder, Preprocess(resize=(28, 56)))
    assert reads_image_files(dataset)
    assert reads_image_files(Subset(dataset, [0, 1]))
    assert reads_image_files(ConcatDataset([dataset, Subset(dataset, [2])]))
    assert not reads_image_files(ConcatDataset([dataset, Images(2)]))
    assert not reads_image_files(Images(2))
    assert not reads_image_files(SyntheticVehicles(2))  # drawn in memory


def test_as_source_chooses_the_defaults(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 4)
    files = as_source(ImageFolderDataset(folder, Preprocess(resize=(28, 56))), 2, "auto")
    assert isinstance(files, MapSource)
    assert (files.num_workers, files.loader.prefetch_factor) == (3, PREFETCH_FACTOR)
    on_cuda = as_source(
        ImageFolderDataset(folder, Preprocess(resize=(28, 56))), 2, "auto", device=CUDA
    )
    assert isinstance(on_cuda, MapSource)
    assert on_cuda.loader.pin_memory
    other = as_source(Images(10), 2, "auto", device=CUDA)
    assert isinstance(other, MapSource)
    assert other.loader == LoaderSettings()
    tensors = as_source(torch.zeros(10, 3, 28, 42), 2, 4, device=CUDA)
    assert isinstance(tensors, MapSource)
    assert tensors.loader == LoaderSettings()


def test_a_users_data_loader_keeps_its_settings() -> None:
    def init(worker: int) -> None:
        del worker

    generator = torch.Generator().manual_seed(3)
    loader = DataLoader(
        Images(10),
        batch_size=5,
        num_workers=2,
        prefetch_factor=7,
        pin_memory=True,
        worker_init_fn=init,
        generator=generator,
        timeout=30.0,
    )
    source = as_source(loader, 64, "auto", device=CUDA)
    assert isinstance(source, MapSource)
    assert source.batch_size == 5
    assert source.loader == LoaderSettings(
        num_workers=2,
        pin_memory=True,
        prefetch_factor=7,
        worker_init_fn=init,
        generator=generator,
        timeout=30.0,
    )
    quiet = as_source(DataLoader(Images(10), batch_size=5), 64, "auto", device=CUDA)
    assert isinstance(quiet, MapSource)
    assert quiet.loader == LoaderSettings()


class _Stream(IterableDataset[Any]):
    def __iter__(self) -> Iterator[Any]:
        yield from (torch.zeros(3, 28, 42) for _ in range(4))


def test_an_iterable_gets_no_workers_by_default() -> None:
    source = as_source(_Stream(), 2, "auto", device=CUDA)
    assert isinstance(source, StreamSource)
    assert isinstance(source.stream, DataLoader)
    assert (source.stream.num_workers, source.stream.pin_memory) == (0, False)
    asked = as_source(_Stream(), 2, 2)
    assert isinstance(asked, StreamSource)
    assert isinstance(asked.stream, DataLoader)
    assert asked.stream.num_workers == 2


def test_features_are_the_same_with_and_without_workers(
    folder: Path, frozen: FrozenBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 3)
    dataset = ImageFolderDataset(folder, Preprocess(resize=(28, 42)))
    assert as_source(dataset, 4, "auto").num_workers == 2  # type: ignore[union-attr]
    by_workers = extract_features(frozen, dataset, batch_size=4, progress=False)
    in_process = extract_features(frozen, dataset, batch_size=4, num_workers=0, progress=False)
    assert by_workers.layout.arrays.keys() == in_process.layout.arrays.keys()
    for name in by_workers.layout.arrays:
        assert torch.equal(by_workers.array(name), in_process.array(name)), name
