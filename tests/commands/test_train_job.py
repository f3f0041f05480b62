"""``fit_heads``, the training loop of ``dinov2-heads train``: a loader that its ``batches``
wraps is watched with the loader's own workers, as ``train_one_epoch`` watches a loader.

Workers stall and die for real, as in ``tests/training/test_loader_failures.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dinov2_heads import create_backbone
from dinov2_heads.cache import WorkerDiedError
from dinov2_heads.commands._train_job import fit_heads
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearHead
from tests.training.test_loader_failures import Pictures, warned, watchdog_threads

SETTINGS = {"epochs": 1, "lr": 1e-3, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def frozen() -> FrozenBackbone:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=16, num_heads=2, img_size=28)
    return FrozenBackbone(backbone)


def features(frozen: FrozenBackbone) -> Any:
    """What ``train`` passes as ``batches``: a generator over the loader's batches."""

    def wrap(batches: Iterable[Any]) -> Iterable[tuple[Features, Tensor]]:
        for images, labels in batches:
            with torch.no_grad():
                computed = frozen(images)
            yield computed, labels

    return wrap


def test_a_stalled_worker_under_a_wrapping_generator_is_counted_in_the_warning(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    loader: DataLoader[Any] = DataLoader(Pictures(at=5, how="sleep"), batch_size=4, num_workers=2)
    torch.manual_seed(0)
    watched = LinearHead(16, 3)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        losses = fit_heads(watched, loader, nn.CrossEntropyLoss(), SETTINGS, progress=False,
                           batches=features(frozen), stall_warning=0.05)  # fmt: skip
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert (
        "the training is waiting for the DataLoader, whose 2 worker processes have not handed "
        "over the next batch"
    ) in first
    assert "read in this process" not in first.split(". ")[0]
    assert not watchdog_threads()
    # The same steps without workers (and so without a stall).
    torch.manual_seed(0)
    plain = LinearHead(16, 3)
    same = fit_heads(plain, DataLoader(Pictures(), batch_size=4), nn.CrossEntropyLoss(),
                     SETTINGS, progress=False, batches=features(frozen),
                     stall_warning=None)  # fmt: skip
    assert losses == same
    for a, b in zip(watched.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(sys.platform == "win32", reason="workers killed by a signal: POSIX only")
def test_a_killed_worker_under_a_wrapping_generator_names_the_loader(
    frozen: FrozenBackbone,
) -> None:
    loader: DataLoader[Any] = DataLoader(Pictures(at=5, how="kill"), batch_size=4, num_workers=2)
    with pytest.raises(WorkerDiedError) as caught:
        fit_heads(LinearHead(16, 3), loader, nn.CrossEntropyLoss(), SETTINGS, progress=False,
                  batches=features(frozen))  # fmt: skip
    message = str(caught.value)
    assert (
        "was killed by signal SIGKILL (Killed) while reading the data with 2 worker processes "
        "and batches of 4 samples"
    ) in message
    assert "The training stopped part way through an epoch" in message
    assert not watchdog_threads()
