"""Tiny backbones and image datasets for the feature-cache tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureStore, loader_reading, source
from dinov2_heads.cache.shared_memory import SharedMemorySpace
from dinov2_heads.cli import main
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.features import FrozenBackbone

#: A roomy ``/dev/shm`` (8 GiB, all free), so that no test here depends on the machine's.
ROOMY_SHM = SharedMemorySpace("/dev/shm", 8 * 2**30, 8 * 2**30)


#: The modules that call ``shared_memory_space``: where the workers are checked against
#: ``/dev/shm`` (``source``), and where a worker that ran out is reported (``loader_reading``).
SHARED_MEMORY_READERS = (source, loader_reading)


def simulate_shared_memory(
    monkeypatch: pytest.MonkeyPatch, space: SharedMemorySpace | None
) -> None:
    """The extraction sees ``space`` as ``/dev/shm`` (``None``: there is none)."""
    for module in SHARED_MEMORY_READERS:
        monkeypatch.setattr(module, "shared_memory_space", lambda: space)


@pytest.fixture(autouse=True)
def roomy_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extraction sees :data:`ROOMY_SHM`; a test that needs another size sets its own."""
    simulate_shared_memory(monkeypatch, ROOMY_SHM)


def tiny_frozen(
    *, registers: int = 0, depth: int = 2, n_last_blocks: int = 2, seed: int = 0
) -> FrozenBackbone:
    """A 32-wide, 2-block ViT with a 4x4 position table, wrapped frozen."""
    torch.manual_seed(seed)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    backbone = create_backbone(name, depth=depth, embed_dim=32, num_heads=2, img_size=56)
    return FrozenBackbone(backbone, n_last_blocks=n_last_blocks)


class Images(Dataset[Any]):
    """``count`` deterministic random images (3, 28, 42) with labels of several kinds.

    ``labels``: ``"int"`` (class index), ``"columns"`` (a dict of two columns), ``"multi"``
    (a multi-hot vector of 5), ``"mask"`` (a segmentation mask (H, W) of classes 0..2),
    ``"none"`` (images only). ``fail_at`` raises ``error`` from
    inside the data, as an interruption would, the first time that index is read.
    """

    def __init__(
        self,
        count: int = 12,
        *,
        labels: str = "int",
        size: tuple[int, int] = (28, 42),
        fail_at: int | None = None,
        error: type[BaseException] = RuntimeError,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.count = count
        self.labels = labels
        self.size = size
        self.fail_at = fail_at
        self.error = error
        self.on_read = on_read
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.count

    def image(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(1000 + index)
        return torch.randn(3, *self.size, generator=generator)

    def __getitem__(self, index: int) -> Any:
        if index == self.fail_at:
            self.fail_at = None
            raise self.error(f"interrupted while reading sample {index}")
        if self.on_read is not None:
            self.on_read(index)
        self.reads.append(index)
        image = self.image(index)
        if self.labels == "int":
            return image, index % 3
        if self.labels == "columns":
            return image, {"colour": index % 3, "type": index % 2}
        if self.labels == "multi":
            return image, torch.tensor([(index >> bit) & 1 for bit in range(5)])
        if self.labels == "mask":
            generator = torch.Generator().manual_seed(2000 + index)
            return image, torch.randint(0, 3, self.size, generator=generator)
        return image


class Samples(Dataset[Any]):
    """A list of items as a map-style ``Dataset``."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class Batches(IterableDataset[Any]):
    """Batches made by ``make()`` each time it is iterated (use with ``batch_size=None``)."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return self.make()


def layout_of(store: FeatureStore) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every array's dtype and per-sample shape (what two equal stores share)."""
    return {name: (spec.dtype, spec.shape) for name, spec in store.layout.arrays.items()}


@pytest.fixture(scope="module")
def frozen() -> FrozenBackbone:
    return tiny_frozen()


@pytest.fixture(scope="module")
def frozen_reg() -> FrozenBackbone:
    return tiny_frozen(registers=4)


# ---------------------------------------------------------------------- the command line


@dataclass(frozen=True)
class Files:
    """A tiny backbone checkpoint and a folder of 8 images, for `dinov2-heads extract`."""

    checkpoint: Path
    folder: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    torch.save(backbone.state_dict(), root / "tiny.pth")
    folder = SyntheticVehicles(8, seed=0, size=(28, 56)).write_folder(root / "cars", label="body")
    return Files(root / "tiny.pth", folder)


def extract(files: Files, out: Path, *extra: str) -> int:
    """`dinov2-heads extract` of ``files`` into ``out`` at 28x56, batches of 2."""
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(out)]
    return main([*argv, "--size", "28", "56", "--batch-size", "2", *extra, str(files.folder)])
