"""Training and evaluation on live images read by ``DataLoader`` workers: nothing fails
silently.

``fit_grid``, ``train_one_epoch``, ``evaluate_grid`` and ``evaluate_dense`` say what an
extraction says: a loader or a step that stalls gets a warning (from the same watchdog, with
the same default) that says which one is waited for and what to try, and a worker killed from
outside, crashed or exited is one clear :class:`~dinov2_heads.cache.WorkerDiedError` instead of
torch's "DataLoader worker (pid N) is killed by signal". Workers die for real here (they signal
themselves); stalls are sleeps of half a second against a threshold of 0.05 s, so a warning is
certain. The watchdog changes no result: the same numbers, bit for bit, without it.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from dinov2_heads import create_backbone
from dinov2_heads.cache import WorkerDiedError
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearHead, LinearSegmentationHead
from dinov2_heads.training import (
    LinearProbeGrid,
    evaluate_dense,
    evaluate_grid,
    fit_grid,
    train_one_epoch,
)
from dinov2_heads.watchdog import STALL_WARNING, WATCHDOG_THREAD_NAME

needs_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="workers killed by a signal: POSIX only"
)


class Pictures(Dataset[tuple[Tensor, Any]]):
    """12 random 28x28 images with 3 classes (or, with ``masks``, a random 28x28 mask of 3
    classes each); reading image ``at`` in a worker process ``"sleep"``s half a second (the
    first time), or kills the worker as the out-of-memory killer does (``"kill"``), crashes it
    (``"segv"``) or exits it with code 3 (``"exit"``)."""

    def __init__(self, *, at: int = -1, how: str = "", masks: bool = False) -> None:
        self.at = at
        self.how = how
        self.masks = masks
        self.slept = False

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        if index == self.at and get_worker_info() is not None:
            if self.how == "sleep" and not self.slept:
                self.slept = True
                time.sleep(0.5)
            elif self.how != "sleep":
                faulthandler.disable()  # pytest's would print a traceback first
                if self.how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.how == "segv":
                    os.kill(os.getpid(), signal.SIGSEGV)
                os._exit(3)
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, 28, 28, generator=generator)
        if self.masks:
            return image, torch.randint(0, 3, (28, 28), generator=generator)
        return image, index % 3


class SlowBackbone(nn.Module):
    """A frozen backbone whose second call takes half a second longer."""

    def __init__(self, frozen: FrozenBackbone) -> None:
        super().__init__()
        self.inner = frozen
        self.calls = 0

    def forward(self, images: Tensor) -> Features:
        self.calls += 1
        if self.calls == 2:
            time.sleep(0.5)
        features: Features = self.inner(images)
        return features


@pytest.fixture(scope="module")
def frozen() -> FrozenBackbone:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=16, num_heads=2, img_size=28)
    return FrozenBackbone(backbone)


def grid() -> LinearProbeGrid:
    torch.manual_seed(0)
    return LinearProbeGrid(16, 3, n_blocks=(1,), avgpool=(False,), learning_rates=(0.1,))


def segmentation_head() -> LinearSegmentationHead:
    torch.manual_seed(0)
    return LinearSegmentationHead(16, 3)


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WATCHDOG_THREAD_NAME]


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dinov2_heads.watchdog" and r.levelno == logging.WARNING
    ]


def causes(error: BaseException) -> str:
    text = []
    current: BaseException | None = error.__cause__
    while current is not None:
        text.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(text)


def test_the_watchdog_is_on_by_default_as_for_an_extraction() -> None:
    import inspect

    from dinov2_heads.cache import extract_features

    for function in (fit_grid, train_one_epoch, evaluate_grid, evaluate_dense, extract_features):
        default = inspect.signature(function).parameters["stall_warning"].default
        assert default == STALL_WARNING


def test_a_stalled_worker_gets_the_warning_an_extraction_gets(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        watched = grid()
        fit_grid(watched, Pictures(at=1, how="sleep"), epochs=1, batch_size=3, frozen=frozen,
                 num_workers=2, progress=False, stall_warning=0.05)  # fmt: skip
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert first.startswith("no batch has come for 0.")
    assert (
        "the training is waiting for the DataLoader, whose 2 worker processes have not "
        "handed over the next batch"
    ) in first
    assert "num_workers=0, --num-workers 0" in first
    assert f"listed by ps --ppid {os.getpid()}" in first
    assert not watchdog_threads()
    # The watchdog changes nothing: the same grid without it.
    unwatched = grid()
    fit_grid(unwatched, Pictures(), epochs=1, batch_size=3, frozen=frozen, progress=False,
             stall_warning=None)  # fmt: skip
    for a, b in zip(watched.parameters(), unwatched.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_stalled_worker_in_an_evaluation_gets_the_same_warning_and_the_same_scores(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    trained = grid()
    fit_grid(trained, Pictures(), epochs=1, batch_size=3, frozen=frozen, progress=False)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        watched = evaluate_grid(trained, Pictures(at=1, how="sleep"), frozen=frozen,
                                batch_size=3, num_workers=2, stall_warning=0.05)  # fmt: skip
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert (
        "the evaluation is waiting for the DataLoader, whose 2 worker processes have not "
        "handed over the next batch"
    ) in first
    assert f"listed by ps --ppid {os.getpid()}" in first
    assert not watchdog_threads()
    unwatched = evaluate_grid(trained, Pictures(), frozen=frozen, batch_size=3,
                              stall_warning=None)  # fmt: skip
    assert watched == unwatched  # every accuracy and loss, bit for bit
    assert watched.rows[0].count == 12


def test_a_stalled_worker_in_a_dense_evaluation_gets_the_warning_and_the_same_scores(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    head = segmentation_head()
    stalled: DataLoader[Any] = DataLoader(
        Pictures(at=5, how="sleep", masks=True), batch_size=4, num_workers=2
    )
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        watched = evaluate_dense(head, stalled, frozen=frozen, stall_warning=0.05)
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert "the evaluation is waiting for the DataLoader, whose 2 worker processes" in first
    assert not watchdog_threads()
    loader: DataLoader[Any] = DataLoader(Pictures(masks=True), batch_size=4)
    unwatched = evaluate_dense(head, loader, frozen=frozen, stall_warning=None)
    assert watched == unwatched  # mIoU, every class's IoU, accuracies: bit for bit


def test_a_stalled_step_of_an_evaluation_is_told_apart_from_the_loader(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    loader: DataLoader[Any] = DataLoader(Pictures(masks=True), batch_size=4)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        evaluate_dense(segmentation_head(), loader, frozen=SlowBackbone(frozen),
                       stall_warning=0.05)  # fmt: skip
    [first] = [line for line in warned(caplog) if f"now at {__file__}:" in line][:1]
    assert "the backbone and the heads have been working on the last one (scoring it)" in first
    assert not watchdog_threads()


def test_a_stalled_step_is_told_apart_from_the_loader(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    head = LinearHead(16, 3)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    loader = DataLoader(Pictures(), batch_size=4)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        _, steps = train_one_epoch(head, loader, optimizer, nn.CrossEntropyLoss(),
                                   frozen=SlowBackbone(frozen), stall_warning=0.05)  # fmt: skip
    assert steps == 3
    [first] = [line for line in warned(caplog) if f"now at {__file__}:" in line][:1]
    assert (
        "the backbone and the heads have been working on the last one (a training step)"
    ) in first
    assert "in forward" in first
    assert not watchdog_threads()


def test_the_watchdog_ends_with_a_training_that_fails_and_its_setting_is_checked(
    frozen: FrozenBackbone,
) -> None:
    head = LinearHead(16, 3)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    batches = [(torch.zeros(3, 3, 28, 28), {"a": torch.zeros(3)})]
    with pytest.raises(ValueError, match="the labels are columns"):
        train_one_epoch(head, batches, optimizer, nn.CrossEntropyLoss(), frozen=frozen,
                        label="b", stall_warning=0.05)  # fmt: skip
    assert not watchdog_threads()
    with pytest.raises(ValueError, match="stall_warning must be a number of seconds > 0"):
        fit_grid(grid(), Pictures(), frozen=frozen, progress=False, stall_warning=0)


@needs_signals
@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("kill", "was killed by signal SIGKILL (Killed) while reading the data"),
        ("segv", "was killed by signal SIGSEGV (Segmentation fault) while reading the data"),
        ("exit", "exited with code 3 while reading the data"),
    ],
)
def test_a_worker_that_dies_is_one_clear_error_as_in_an_extraction(
    frozen: FrozenBackbone, how: str, said: str
) -> None:
    with pytest.raises(WorkerDiedError) as caught:
        fit_grid(grid(), Pictures(at=7, how=how), epochs=1, batch_size=3, frozen=frozen,
                 num_workers=2, progress=False)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message  # one paragraph: the command line prints it whole
    assert message.startswith("a DataLoader worker process (pid ")
    assert f"{said} with 2 worker processes and batches of 3 samples" in message
    assert "The training stopped part way through an epoch: run it again" in message
    assert "extraction" not in message
    assert isinstance(caught.value, RuntimeError)  # as torch's error was
    assert "DataLoader worker (pid" in causes(caught.value)
    assert not watchdog_threads()


@needs_signals
def test_a_worker_that_dies_in_an_evaluation_is_one_clear_error(frozen: FrozenBackbone) -> None:
    with pytest.raises(WorkerDiedError) as caught:
        evaluate_grid(grid(), Pictures(at=7, how="kill"), frozen=frozen, batch_size=3,
                      num_workers=2)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "was killed by signal SIGKILL (Killed) while reading the data with 2 worker processes "
        "and batches of 3 samples"
    ) in message
    assert "The evaluation stopped part way through (the heads are unchanged): run it" in message
    assert "training" not in message
    assert "DataLoader worker (pid" in causes(caught.value)
    assert not watchdog_threads()
    loader: DataLoader[Any] = DataLoader(
        Pictures(at=5, how="exit", masks=True), batch_size=4, num_workers=2
    )
    with pytest.raises(WorkerDiedError, match="exited with code 3 while reading the data with 2"):
        evaluate_dense(segmentation_head(), loader, frozen=frozen)
    assert not watchdog_threads()


@needs_signals
def test_train_one_epoch_names_a_killed_worker_of_a_loader_of_its_own(
    frozen: FrozenBackbone,
) -> None:
    head = LinearHead(16, 3)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    loader: DataLoader[Any] = DataLoader(Pictures(at=5, how="kill"), batch_size=4, num_workers=2)
    with pytest.raises(WorkerDiedError, match="with 2 worker processes and batches of 4"):
        train_one_epoch(head, loader, optimizer, nn.CrossEntropyLoss(), frozen=frozen)


def relabelled(batches: Any) -> Any:
    """The batches with their labels under a column, as a wrapping generator yields them."""
    for images, labels in batches:
        yield images, {"class": labels}


def test_a_generator_over_a_loader_is_warned_about_with_the_loader_s_workers(
    frozen: FrozenBackbone, caplog: pytest.LogCaptureFixture
) -> None:
    head = LinearHead(16, 3)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    loader: DataLoader[Any] = DataLoader(Pictures(at=5, how="sleep"), batch_size=4, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.watchdog"):
        _, steps = train_one_epoch(head, relabelled(loader), optimizer, nn.CrossEntropyLoss(),
                                   frozen=frozen, label="class", stall_warning=0.05,
                                   loader=loader)  # fmt: skip
    assert steps == 3
    [first] = [line for line in warned(caplog) if "waiting for the DataLoader" in line][:1]
    assert "the training is waiting for the DataLoader, whose 2 worker processes" in first
    with pytest.raises(ValueError, match="the batches are another DataLoader"):
        train_one_epoch(head, DataLoader(Pictures(), batch_size=4), optimizer,
                        nn.CrossEntropyLoss(), frozen=frozen, loader=loader)  # fmt: skip
