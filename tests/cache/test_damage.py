"""Damaged stores: hand-edited manifests, files cut under a reader, lost files, flipped bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dinov2_heads.cache import DamagedStoreError, FeatureStore, extract_features
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images, layout_of


@pytest.fixture(scope="module")
def reference(frozen: FrozenBackbone) -> FeatureStore:
    return extract_features(frozen, Images(9), keep="patch_tokens", batch_size=2, progress=False)


@pytest.fixture(scope="module")
def pristine(frozen: FrozenBackbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished store on disk; tests damage copies of it."""
    path = tmp_path_factory.mktemp("pristine") / "store"
    make_store(frozen, path)
    return path


def copy_of(pristine: Path, folder: Path) -> Path:
    shutil.copytree(pristine, folder / "store")
    return folder / "store"


def make_store(frozen: FrozenBackbone, path: Path, **options: Any) -> FeatureStore:
    return extract_features(
        frozen, Images(9), path=path, keep="patch_tokens", batch_size=2, progress=False, **options
    )


def assert_same(store: FeatureStore, reference: FeatureStore) -> None:
    assert len(store) == len(reference)
    assert layout_of(store) == layout_of(reference)
    for name in reference.layout.arrays:
        assert torch.equal(store.array(name), reference.array(name)), name


def edit(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        target = manifest
        *parents, last = key.split("/")
        for parent in parents:
            target = target[parent]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (edit("written", -3), "'written' must be an integer >= 0, got -3"),
        (edit("written", "ten"), "'written' must be an integer >= 0, got 'ten'"),
        (edit("count", 4), "'written' is 9, more than the count of 4"),
        (edit("complete", "yes"), "'complete' must be true or false"),
        (edit("arrays", KeyError), "'arrays' is missing"),
        (edit("arrays/patch_mean/shape", [-640]), "'arrays.patch_mean.shape' must be a list"),
        (edit("arrays/patch_mean/dtype", "float99"), "'arrays.patch_mean.dtype' must be one of"),
        (edit("arrays/patch_mean/file", "../../x.bin"), "'arrays.patch_mean.file' must be"),
        (edit("arrays/labels", KeyError), "'arrays' must describe the arrays"),
        (edit("grid", [2]), "'grid' must be a list of 2 integers"),
        (edit("labels/columns", "label"), "'labels.columns' must be a non-empty list"),
        (edit("backbone", None), "'backbone' must be a JSON object"),
        (edit("version", "two"), "'version' must be an integer >= 1"),
        (edit("depth", 0), "'depth' must be an integer >= 1, got 0"),
        (edit("blocks", [[2, True]]), "'blocks' must be a sorted list of distinct [index, norm]"),
        (edit("blocks", [[1, "yes"]]), "'blocks' must be a sorted list of distinct [index, norm]"),
        (edit("blocks", [[1, True]]), "'arrays' must describe the arrays"),
    ],
)
def test_a_hand_damaged_manifest_is_one_clear_error(
    frozen: FrozenBackbone, pristine: Path, tmp_path: Path, change: Any, field: str
) -> None:
    path = copy_of(pristine, tmp_path)
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest))
    for attempt in (
        lambda: FeatureStore.open(path),
        lambda: make_store(frozen, path),  # resuming reads the manifest too
    ):
        with pytest.raises(DamagedStoreError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith(f"{file} is not a valid feature store manifest: {field}")
        assert "extract the store again" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"format": "dinov2-heads/feature-store", "version": 2,', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"[1, 2]", "must be a JSON object, got list"),
    ],
)
def test_a_manifest_that_is_not_json_names_the_file(
    tmp_path: Path, text: bytes, problem: str
) -> None:
    (tmp_path / "manifest.json").write_bytes(text)
    with pytest.raises(DamagedStoreError, match=problem) as caught:
        FeatureStore.open(tmp_path)
    assert str(tmp_path / "manifest.json") in str(caught.value)


def test_shapes_that_do_not_fit_the_file_sizes_are_refused_on_open(
    pristine: Path, tmp_path: Path
) -> None:
    path = copy_of(pristine, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["patch_mean"]["shape"] = [16]  # half of each row
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedStoreError, match=r"patch_mean\.bin holds 576 bytes .*\(288 bytes\)"):
        FeatureStore.open(path)


def _read_after_cutting(path: str, cut: str) -> None:
    """In a child: map the store, then cut (or replace) a file under the map, then read."""
    store = FeatureStore.open(path)
    store.features(slice(None))  # maps every file
    file = Path(path) / "patch_tokens.bin"
    if cut == "truncate":
        os.truncate(file, 100)
    else:
        file.unlink()
        file.write_bytes(b"\0" * 10_000)
    try:
        store.features([8])
    except DamagedStoreError as error:
        expected = "was cut to 100 bytes" if cut == "truncate" else "deleted or replaced"
        os._exit(0 if expected in str(error) else 3)
    os._exit(4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="reads in a forked child to survive SIGBUS")
@pytest.mark.parametrize("cut", ["truncate", "replace"])
def test_a_store_cut_under_a_reader_raises_instead_of_sigbus(
    pristine: Path, tmp_path: Path, cut: str
) -> None:
    path = copy_of(pristine, tmp_path)
    pid = os.fork()
    if pid == 0:
        try:
            _read_after_cutting(str(path), cut)
        finally:
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the reader died of {signal.Signals(os.WTERMSIG(status))}"
    assert os.WEXITSTATUS(status) == 0
    with pytest.raises(DamagedStoreError, match=r"patch_tokens\.bin holds"):
        FeatureStore.open(path)


@pytest.mark.parametrize("damage", ["lost", "cut"])
def test_a_resumed_store_with_a_lost_or_cut_file_is_repaired(
    frozen: FrozenBackbone, reference: FeatureStore, tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(
            frozen,
            Images(9, fail_at=6),
            path=path,
            keep="patch_tokens",
            batch_size=2,
            progress=False,
        )
    assert len(FeatureStore.open(path, allow_incomplete=True)) == 6
    file = path / "class_tokens.bin"
    row = 2 * 32 * 2  # (n, D) float16
    if damage == "lost":
        file.unlink()
    else:
        os.truncate(file, 3 * row + 10)  # three whole rows and a part
    with pytest.raises(DamagedStoreError, match=r"class_tokens\.bin"):
        FeatureStore.open(path, allow_incomplete=True)
    data = Images(9)
    store = extract_features(
        frozen, data, path=path, keep="patch_tokens", batch_size=2, progress=False
    )
    # Resumed from the rows every file still holds: none, or the three whole ones.
    first = 0 if damage == "lost" else 3
    assert data.reads == list(range(first, 9))
    assert_same(store, reference)
    store.verify()


def test_a_complete_store_with_a_cut_file_is_repaired_by_extracting_again(
    frozen: FrozenBackbone, reference: FeatureStore, pristine: Path, tmp_path: Path
) -> None:
    path = copy_of(pristine, tmp_path)
    os.truncate(path / "patch_tokens.bin", 0)
    with pytest.raises(DamagedStoreError, match=r"patch_tokens\.bin holds 0 bytes"):
        FeatureStore.open(path)
    data = Images(9)
    store = extract_features(
        frozen, data, path=path, keep="patch_tokens", batch_size=2, progress=False
    )
    assert data.reads == list(range(9))
    assert_same(store, reference)
    store.verify()


def test_checksums_find_flipped_bytes(pristine: Path, tmp_path: Path) -> None:
    path = copy_of(pristine, tmp_path)
    store = FeatureStore.open(path)
    assert all(spec.sha256 for spec in store.layout.arrays.values())
    checked = store.verify()
    assert checked.checksums
    assert set(checked.files) == {f"{name}.bin" for name in store.layout.arrays}
    assert checked.nbytes == store.nbytes
    with open(path / "patch_mean.bin", "r+b") as file:
        file.seek(40)
        byte = file.read(1)
        file.seek(40)
        file.write(bytes([byte[0] ^ 0x10]))
    store = FeatureStore.open(path)  # the sizes still fit: only the checksum tells
    with pytest.raises(
        DamagedStoreError, match=r"patch_mean\.bin has sha256 [0-9a-f]{64}, recorded"
    ):
        store.verify()
    with pytest.raises(ValueError, match="in memory"):
        store.to_memory().verify()
