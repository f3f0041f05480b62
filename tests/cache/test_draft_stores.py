"""Draft decoding in the store's preprocessing: stores made without it open and resume as they
did, and a store never mixes samples decoded both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.cache import FeatureStore, StoreMismatchError, extract_features
from dinov2_heads.data import Preprocess, get_preset
from dinov2_heads.features import FrozenBackbone
from tests.cache.conftest import Images

#: What a store made with ``preprocessing=get_preset("official_eval")`` has recorded since
#: before draft decoding existed.
OFFICIAL_EVAL_RECORD = {
    "type": "Preprocess",
    "resize": 256,
    "crop": [224, 224],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "patch_size": 14,
}


def _interrupted(frozen: FrozenBackbone, path: Path, preprocessing: Preprocess) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(
            frozen,
            Images(6, fail_at=4),
            path=path,
            batch_size=2,
            preprocessing=preprocessing,
            progress=False,
        )


def test_a_store_without_draft_records_what_it_always_did_and_resumes(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    plain = get_preset("official_eval")
    _interrupted(frozen, path, plain)
    recorded = json.loads((path / "manifest.json").read_text())["preprocessing"]
    assert recorded == OFFICIAL_EVAL_RECORD
    data = Images(6)
    store = extract_features(
        frozen, data, path=path, batch_size=2, preprocessing=plain, progress=False
    )
    assert data.reads == [4, 5]  # resumed, not started again
    assert len(store) == 6
    FeatureStore.open(path, preprocessing=Preprocess(resize=256, crop=(224, 224)))


def test_a_store_written_before_draft_existed_opens_and_resumes(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    # The manifest as an earlier version wrote it: the record above, literally.
    path = tmp_path / "store"
    _interrupted(frozen, path, get_preset("official_eval"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["preprocessing"] = OFFICIAL_EVAL_RECORD
    (path / "manifest.json").write_text(json.dumps(manifest))
    store = extract_features(
        frozen,
        Images(6),
        path=path,
        batch_size=2,
        preprocessing=get_preset("official_eval"),
        progress=False,
    )
    assert store.complete
    FeatureStore.open(path, preprocessing=get_preset("official_eval"))


@pytest.mark.parametrize("started_with_draft", [False, True])
def test_draft_and_full_decoding_never_share_a_store(
    frozen: FrozenBackbone, tmp_path: Path, started_with_draft: bool
) -> None:
    path = tmp_path / "store"
    started = get_preset("official_eval").replace(draft=started_with_draft)
    other = started.replace(draft=not started_with_draft)
    _interrupted(frozen, path, started)
    with pytest.raises(StoreMismatchError, match=r"\(they differ in: draft\)"):
        extract_features(
            frozen, Images(6), path=path, batch_size=2, preprocessing=other, progress=False
        )
    store = extract_features(
        frozen, Images(6), path=path, batch_size=2, preprocessing=started, progress=False
    )
    assert store.manifest.preprocessing.get("draft", False) is started_with_draft
    with pytest.raises(StoreMismatchError, match="was made with preprocessing"):
        FeatureStore.open(path, preprocessing=other)
    FeatureStore.open(path, preprocessing=started)
