"""One writer per store: a second concurrent writer is refused, a dead writer's lock taken over."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import (
    FeatureStore,
    StoreLockedError,
    StoreMismatchError,
    extract_features,
)
from dinov2_heads.cache import lock as lock_module
from dinov2_heads.cache.lock import LOCK_FILE, StoreLock
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint
from tests.cache.conftest import Images, tiny_frozen

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a second writer")


def _first_writer(path: Path, started: int, proceed: int) -> None:
    """In a child: extract, pausing while reading sample 0 until the parent says go on."""
    torch.set_num_threads(1)

    def pause(index: int) -> None:
        if index == 0:
            os.write(started, b"x")
            os.read(proceed, 1)

    extract_features(
        tiny_frozen(), Images(8, on_read=pause), path=path, batch_size=2, progress=False
    )


def test_a_second_writer_of_a_new_store_is_refused(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    started_read, started_write = os.pipe()
    proceed_read, proceed_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _first_writer(path, started_write, proceed_read)
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(started_read, 1) == b"x"  # the first writer is inside its extraction
        other = tiny_frozen(seed=1)  # other weights: without the lock, rows of both would mix
        with pytest.raises(StoreLockedError) as caught:
            extract_features(other, Images(8), path=path, batch_size=2, progress=False)
        message = str(caught.value)
        assert f"process {pid} on {socket.gethostname()}" in message
        assert LOCK_FILE in message
        with pytest.raises(StoreLockedError):  # overwriting is no way around it
            extract_features(other, Images(8), path=path, overwrite=True, progress=False)
    finally:
        os.write(proceed_write, b"x")
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    store = FeatureStore.open(path)
    assert store.fingerprint == weights_fingerprint(frozen)
    assert not (path / LOCK_FILE).exists()  # released when done
    with pytest.raises(StoreMismatchError, match="backbone fingerprint"):
        extract_features(tiny_frozen(seed=1), Images(8), path=path, progress=False)


def test_the_lock_of_a_dead_writer_is_taken_over(
    frozen: FrozenBackbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    path.mkdir()
    pid = os.fork()
    if pid == 0:
        StoreLock.acquire(path)
        os._exit(0)  # dies holding the lock: the kernel releases it, the file stays
    os.waitpid(pid, 0)
    assert (path / LOCK_FILE).read_text().split()[0] == str(pid)
    with caplog.at_level(logging.INFO, logger="dinov2_heads.cache"):
        store = extract_features(frozen, Images(3), path=path, progress=False)
    assert len(store) == 3
    assert any(f"left by process {pid}" in record.getMessage() for record in caplog.records)


def test_without_flock_a_live_owner_holds_and_a_dead_one_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_module, "_fcntl", None)
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(f"{sleeper.pid} {host}\n")
        with pytest.raises(StoreLockedError, match=f"process {sleeper.pid} on {host}"):
            StoreLock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    with StoreLock.acquire(tmp_path) as held:  # the sleeper is gone: its lock is stale
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()} {host}\n"
        with pytest.raises(StoreLockedError):
            StoreLock.acquire(tmp_path)
    assert held.path == tmp_path / LOCK_FILE
    assert not held.path.exists()
