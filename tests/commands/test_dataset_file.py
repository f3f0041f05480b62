"""The checkpoint that dataset.json records beside a store, read back as --checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.checkpoints.record import CHECKPOINT_KEY, checkpoint_record
from dinov2_heads.commands._dataset_file import DATASET_FILE, checkpoint_argument
from dinov2_heads.neighbors.image_paths import DATASET_FILE as NEIGHBORS_DATASET_FILE


def record(store: Path, entry: object) -> Path:
    store.mkdir(exist_ok=True)
    (store / DATASET_FILE).write_text(json.dumps({"paths": [], CHECKPOINT_KEY: entry}))
    return store


def test_the_store_file_is_the_one_the_neighbors_read() -> None:
    assert DATASET_FILE == NEIGHBORS_DATASET_FILE == "dataset.json"


def test_a_file_path_comes_back_as_given_or_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "my models" / "tiny.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    store = record(tmp_path / "store", checkpoint_record("my models/tiny.pth"))
    assert checkpoint_argument(store) == "'my models/tiny.pth'"
    monkeypatch.chdir(store)  # the relative path names nothing from here
    assert checkpoint_argument(store) == f"'{checkpoint}'"
    checkpoint.unlink()
    assert checkpoint_argument(store) is None


def test_a_repo_id_comes_back_while_the_cache_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    entry = checkpoint_record("facebook/dinov2-small")
    assert entry == {"given": "facebook/dinov2-small", "path": None}
    store = record(tmp_path / "store", entry)
    assert checkpoint_argument(store) is None  # not in the cache (any more)
    (cache / "models--facebook--dinov2-small").mkdir(parents=True)
    assert checkpoint_argument(store) == "facebook/dinov2-small"


@pytest.mark.parametrize("entry", [None, "tiny.pth", {"given": 3, "path": None}, {"path": 3}])
def test_nothing_usable_recorded_is_none(tmp_path: Path, entry: object) -> None:
    assert checkpoint_argument(record(tmp_path / "store", entry)) is None
    assert checkpoint_argument(tmp_path / "elsewhere") is None
    assert checkpoint_argument(None) is None
