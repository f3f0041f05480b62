"""Resumable extraction: an interrupted store finishes with every sample exactly once, in order."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_heads.cache import FeatureStore, StoreMismatchError, extract_features
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Batches, Images, layout_of, tiny_frozen

ARRAYS = ("class_tokens", "patch_mean", "patch_tokens", "sample_ids", "labels")


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert len(a) == len(b)
    assert layout_of(a) == layout_of(b)
    for name in a.layout.arrays:
        assert torch.equal(a.array(name), b.array(name)), name


@pytest.fixture(scope="module")
def reference(frozen: FrozenBackbone) -> FeatureStore:
    return extract_features(frozen, Images(11), keep="patch_tokens", batch_size=3, progress=False)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_resume_after_an_interruption_at_a_random_batch(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path, error: type[BaseException]
) -> None:
    fail_at = random.Random(f"resume-{error.__name__}").randrange(3, 11)
    data = Images(11, fail_at=fail_at, error=error)
    path = tmp_path / "store"
    with pytest.raises(error, match="interrupted"):
        extract_features(frozen, data, path=path, keep="patch_tokens", batch_size=3, progress=False)
    partial = FeatureStore.open(path, allow_incomplete=True)
    done = fail_at // 3 * 3  # the batches before the one being read
    assert not partial.complete
    assert len(partial) == done
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore.open(path)

    data.reads.clear()
    store = extract_features(
        frozen, data, path=path, keep="patch_tokens", batch_size=3, progress=False
    )
    # Only the missing samples were read again, each once.
    assert data.reads == list(range(done, 11))
    assert store.complete
    assert_same_store(store, reference)
    assert torch.equal(store.sample_ids(), torch.arange(11))
    assert not list(path.glob(".manifest.json.*"))

    # A finished store is returned as it is, without running the backbone; only the first
    # sample is read, to check the input size.
    data.reads.clear()
    again = extract_features(
        frozen, data, path=path, keep="patch_tokens", batch_size=3, progress=False
    )
    assert data.reads == [0]
    assert_same_store(again, reference)


def test_resume_a_stream_of_batches(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path
) -> None:
    data = Images(11)
    images = torch.stack([data.image(i) for i in range(11)])
    labels = torch.arange(11) % 3

    def batches(fail: bool) -> DataLoader[Any]:
        def make() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, 11, 4):
                if fail and start == 8:
                    raise RuntimeError("interrupted at the third batch")
                yield images[start : start + 4], labels[start : start + 4]

        return DataLoader(Batches(make), batch_size=None)

    path = tmp_path / "stream"
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(frozen, batches(True), path=path, keep="patch_tokens", progress=False)
    assert len(FeatureStore.open(path, allow_incomplete=True)) == 8
    store = extract_features(frozen, batches(False), path=path, keep="patch_tokens", progress=False)
    assert_same_store(store, reference)


def _extract_and_die(path: str, kill_at: int) -> None:
    def die(index: int) -> None:
        if index == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    data = Images(11, on_read=die)
    extract_features(
        tiny_frozen(), data, path=path, keep="patch_tokens", batch_size=3, progress=False
    )


def test_resume_after_the_process_is_killed(reference: FeatureStore, tmp_path: Path) -> None:
    """A child process kills itself (SIGKILL, no clean-up) while reading a random sample."""
    kill_at = random.Random("kill").randrange(3, 11)
    path = tmp_path / "killed"
    # fork shares the parent's imports; a spawned child would spend seconds importing torch.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    child = multiprocessing.get_context(method).Process(
        target=_extract_and_die, args=(str(path), kill_at)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["written"] == kill_at // 3 * 3
    assert not manifest["complete"]
    # The killed writer's lock file stays behind, naming it; the next writer takes it over.
    assert (path / ".feature-store.lock").read_text().split()[0] == str(child.pid)

    store = extract_features(
        tiny_frozen(), Images(11), path=path, keep="patch_tokens", batch_size=3, progress=False
    )
    assert_same_store(store, reference)


def test_refuses_to_resume_with_other_weights(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    with pytest.raises(RuntimeError):
        extract_features(frozen, Images(6, fail_at=4), path=path, batch_size=2, progress=False)
    other = tiny_frozen(seed=1)
    with pytest.raises(StoreMismatchError) as caught:
        extract_features(other, Images(6), path=path, batch_size=2, progress=False)
    message = str(caught.value)
    stored = FeatureStore.open(path, allow_incomplete=True).fingerprint
    assert stored in message
    assert FeatureStore.open(path, allow_incomplete=True).manifest.backbone.fingerprint in message
    from dinov2_heads.fingerprint import weights_fingerprint

    assert weights_fingerprint(other) in message


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"preprocessing": "resize 28x42"}, "preprocessing"),
        ({"dtype": torch.float32}, "dtype"),
        ({"data": Images(7)}, "a dataset of 6 samples"),
        ({"data": Images(6, size=(28, 28))}, "input size"),
        ({"keep": "patch_tokens"}, "keep"),
        ({"data": Images(6, labels="columns")}, "labels"),
    ],
)
def test_refuses_to_resume_with_other_settings(
    frozen: FrozenBackbone, tmp_path: Path, change: dict[str, object], pattern: str
) -> None:
    path = tmp_path / "store"
    with pytest.raises(RuntimeError):
        extract_features(frozen, Images(6, fail_at=4), path=path, batch_size=2, progress=False)
    arguments: dict[str, object] = {"data": Images(6), "batch_size": 2, "progress": False}
    arguments.update(change)
    data = arguments.pop("data")
    with pytest.raises(StoreMismatchError, match=pattern):
        extract_features(frozen, data, path=path, **arguments)  # type: ignore[arg-type]


def test_overwrite_starts_again(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(4), path=path, progress=False)
    store = extract_features(frozen, Images(5), path=path, overwrite=True, progress=False)
    assert len(store) == 5


def test_open_checks_backbone_size_and_preprocessing(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(3), path=path, preprocessing="resize 28x42", progress=False)
    FeatureStore.open(path, backbone=frozen, input_size=(28, 42), preprocessing="resize 28x42")
    with pytest.raises(StoreMismatchError, match=r"28x42 images, expected 56x56"):
        FeatureStore.open(path, input_size=(56, 56))
    with pytest.raises(StoreMismatchError, match=r'"resize 28x42", expected "center crop"'):
        FeatureStore.open(path, preprocessing="center crop")
    other = tiny_frozen(seed=1)
    with pytest.raises(StoreMismatchError, match="other backbone weights") as caught:
        FeatureStore.open(path, backbone=other)
    assert FeatureStore.open(path).fingerprint in str(caught.value)
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ("keep", "keep"),
        ("size", "input size"),
        ("blocks", "n_blocks"),
    ],
)
def test_a_finished_store_is_refused_for_other_settings(
    frozen: FrozenBackbone, tmp_path: Path, change: str, pattern: str
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(6), path=path, batch_size=2, progress=False)
    arguments: dict[str, object] = {"frozen": frozen, "data": Images(6), "progress": False}
    if change == "keep":
        arguments["keep"] = "patch_tokens"
    elif change == "size":
        arguments["data"] = Images(6, size=(28, 28))
    else:
        arguments["frozen"] = tiny_frozen(n_last_blocks=1)
    with pytest.raises(StoreMismatchError, match=pattern):
        extract_features(path=path, **arguments)  # type: ignore[arg-type]
    # The same settings still return the finished store without reading the data again.
    data = Images(6)
    assert len(extract_features(frozen, data, path=path, progress=False)) == 6
    assert data.reads == [0]


def test_a_store_killed_after_its_last_batch_is_checked_before_it_is_finished(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    extract_features(frozen, Images(4), path=path, batch_size=2, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["complete"] = False  # as if killed between the last commit and the finish
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreMismatchError, match="keep"):
        extract_features(frozen, Images(4), path=path, keep="patch_tokens", progress=False)
    assert not FeatureStore.open(path, allow_incomplete=True).complete
