"""A full disk stops an extraction with OSError and leaves a store that resumes once there is room.

The disk is a small tmpfs mounted for the test, so it runs only as root (where ``mount`` works).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dinov2_heads.cache import FeatureStore, extract_features
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images, layout_of


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 KiB tmpfs: room for about half of the store below."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_leaves_a_resumable_store(frozen: FrozenBackbone, small_disk: Path) -> None:
    options = {"keep": "patch_tokens", "dtype": torch.float32, "batch_size": 4, "progress": False}
    reference = extract_features(frozen, Images(24), **options)  # type: ignore[arg-type]
    assert reference.nbytes > 40 * 1024
    path = small_disk / "store"
    with pytest.raises(OSError, match="No space left") as caught:
        extract_features(frozen, Images(24), path=path, **options)  # type: ignore[arg-type]
    assert caught.value.errno == errno.ENOSPC
    partial = FeatureStore.open(path, allow_incomplete=True)
    assert 0 < len(partial) < 24
    done = len(partial)
    for name in reference.layout.arrays:
        assert torch.equal(partial.array(name), reference.array(name)[:done]), name

    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    data = Images(24)
    store = extract_features(frozen, data, path=path, **options)  # type: ignore[arg-type]
    assert data.reads == list(range(done, 24))
    assert layout_of(store) == layout_of(reference)
    for name in reference.layout.arrays:
        assert torch.equal(store.array(name), reference.array(name)), name
    assert store.verify().checksums
