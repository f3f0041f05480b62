"""NearestNeighbors: exact against a full sort, chunks, ties, stores, paths, saving, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dinov2_heads.cache import FeatureStore, StoreMismatchError, extract_features
from dinov2_heads.checkpoints import create_backbone
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.neighbors import NearestNeighbors, source_fingerprint, store_image_paths
from dinov2_heads.neighbors.image_paths import DATASET_FILE


def vectors(seed: int = 0, m: int = 300, d: int = 16) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed))


def brute_force(stored: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """The full similarity matrix, sorted: higher first, the lower row first among equals."""
    similarity = torch.nn.functional.normalize(queries, dim=1) @ (
        torch.nn.functional.normalize(stored, dim=1).T
    )
    order = similarity.argsort(dim=1, descending=True, stable=True)[:, :k]
    return similarity.gather(1, order), order


def features_of(rows: torch.Tensor) -> Features:
    b, d = rows.shape
    patches = torch.randn(b, 4, d, generator=torch.Generator().manual_seed(b))
    return Features.from_tokens([rows], [patches], (2, 2))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_equals_a_full_sort(chunk_size: int | None) -> None:
    stored, queries = vectors(0), vectors(1, m=20)
    result = NearestNeighbors(stored, chunk_size=chunk_size).search(queries, k=9)
    values, order = brute_force(stored, queries, 9)
    assert torch.equal(result.indices, order)
    torch.testing.assert_close(result.similarities, values, rtol=0, atol=1e-6)
    assert torch.equal(result.sample_ids, order)  # a tensor's ids are its rows
    assert result.paths is None
    assert result.similarities.dtype == torch.float32


def test_ties_go_to_the_lower_row_whatever_the_chunks() -> None:
    base = vectors(2, m=5)
    stored = torch.cat([base, base, base * 3.0])  # rows i, i + 5, i + 10: the same direction
    for chunk_size in (1, 4, 15):
        result = NearestNeighbors(stored, chunk_size=chunk_size).search(base[:2], k=3)
        assert result.indices.tolist() == [[0, 5, 10], [1, 6, 11]]


def test_a_store_gives_its_sample_ids_and_equals_tensors() -> None:
    stored = vectors(3, m=50)
    ids = torch.arange(50) * 10 + 7
    store = FeatureStore.from_features(features_of(stored), sample_ids=ids, dtype=torch.float32)
    queries = vectors(4, m=6)
    from_store = NearestNeighbors(store, chunk_size=8).search(queries, k=4)
    from_tensor = NearestNeighbors(stored).search(queries, k=4)
    assert torch.equal(from_store.indices, from_tensor.indices)
    torch.testing.assert_close(from_store.similarities, from_tensor.similarities)
    assert torch.equal(from_store.sample_ids, ids[from_store.indices])
    assert from_store.paths is None  # a store in memory knows no paths


def test_features_queries_are_pooled_like_the_rows() -> None:
    stored = features_of(vectors(5, m=40))
    queries = features_of(vectors(6, m=3))
    search = NearestNeighbors(stored, pooling="class+patch_mean")
    assert search.embed_dim == 32
    pooled = torch.cat([queries.class_token, queries.patch_mean], dim=1)
    assert torch.equal(search.search(queries, k=5).indices, search.search(pooled, k=5).indices)
    expected = brute_force(torch.cat([stored.class_token, stored.patch_mean], 1), pooled, 5)[1]
    assert torch.equal(search.search(queries, k=5).indices, expected)


def test_neighbors_and_table() -> None:
    stored = vectors(7, m=10)
    paths = [f"img/{i}.png" for i in range(10)]
    result = NearestNeighbors(stored, paths=paths).search(stored[3:5], k=2)
    first = result.neighbors(0)[0]
    assert (first.rank, first.index, first.sample_id, first.path) == (1, 3, 3, "img/3.png")
    assert first.similarity == pytest.approx(1.0, abs=1e-6)
    assert result.paths is not None
    assert result.paths[1][0] == "img/4.png"
    lines = result.table(1).splitlines()
    assert lines[0].split() == ["rank", "similarity", "id", "path"]
    assert lines[1].split() == ["1", "1.0000", "4", "img/4.png"]
    with pytest.raises(IndexError, match="out of range for 2 queries"):
        result.neighbors(2)


# ---------------------------------------------------------------------- stores on disk


@pytest.fixture(scope="module")
def frozen() -> FrozenBackbone:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    return FrozenBackbone(backbone)


def disk_store(frozen: FrozenBackbone, root: Path, seed: int, count: int = 12) -> FeatureStore:
    images = torch.randn(count, 3, 28, 28, generator=torch.Generator().manual_seed(seed))
    data = TensorDataset(images, torch.zeros(count, dtype=torch.long))
    return extract_features(frozen, data, path=root, batch_size=5, progress=False)


def test_paths_come_from_dataset_json_by_sample_id(frozen: FrozenBackbone, tmp_path: Path) -> None:
    store = disk_store(frozen, tmp_path / "s", seed=0)
    assert NearestNeighbors(store).paths is None  # no dataset.json yet
    listed = [f"photos/{i:03d}.jpg" for i in range(12)]
    (tmp_path / "s" / DATASET_FILE).write_text(json.dumps({"paths": listed}), encoding="utf-8")
    search = NearestNeighbors(store)
    result = search.search(store.features([2, 9]), k=3)
    assert result.paths is not None
    assert result.paths[0][0] == "photos/002.jpg"
    assert result.paths[1][0] == "photos/009.jpg"
    assert result.paths == [[listed[i] for i in row] for row in result.sample_ids.tolist()]
    # Given paths win over the file.
    given = NearestNeighbors(store, paths=[f"x{i}" for i in range(12)]).search(
        store.features([2]), k=1
    )
    assert given.paths == [["x2"]]


def test_a_short_or_broken_dataset_json_is_logged_not_raised(
    frozen: FrozenBackbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = disk_store(frozen, tmp_path / "s", seed=0)
    file = tmp_path / "s" / DATASET_FILE
    file.write_text(json.dumps({"paths": ["a.jpg", "b.jpg"]}), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        paths = store_image_paths(store)
    assert paths == ["a.jpg", "b.jpg"] + [None] * 10
    assert "10 of the 12 stored samples" in caplog.text
    file.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert store_image_paths(store) is None
    assert "cannot be read" in caplog.text


def test_save_and_open_keep_the_settings_and_refuse_other_features(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    store = disk_store(frozen, tmp_path / "s", seed=0)
    search = NearestNeighbors(store, pooling="patch_mean", chunk_size=5)
    saved = search.save(tmp_path / "index" / "search.json")
    record = json.loads(saved.read_text(encoding="utf-8"))
    assert record["pooling"] == "patch_mean"
    assert record["chunk_size"] == 5
    assert record["backbone_fingerprint"] == store.fingerprint
    assert record["fingerprint"] == source_fingerprint(store, "patch_mean")

    reopened = NearestNeighbors.open(saved, FeatureStore.open(tmp_path / "s"))
    assert (reopened.pooling, reopened.chunk_size, reopened.backend) == ("patch_mean", 5, "torch")
    queries = store.features([0, 4])
    assert torch.equal(reopened.search(queries, k=4).indices, search.search(queries, k=4).indices)

    other_images = disk_store(frozen, tmp_path / "other", seed=1)
    with pytest.raises(StoreMismatchError, match=r"built for other features.*12 samples"):
        NearestNeighbors.open(saved, other_images)
    fewer = disk_store(frozen, tmp_path / "fewer", seed=0, count=11)
    with pytest.raises(StoreMismatchError, match="11 samples"):
        NearestNeighbors.open(saved, fewer)


def test_other_backbone_weights_are_refused(frozen: FrozenBackbone, tmp_path: Path) -> None:
    store = disk_store(frozen, tmp_path / "s", seed=0)
    saved = NearestNeighbors(store).save(tmp_path / "search.json")
    torch.manual_seed(1)
    other = FrozenBackbone(
        create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    )
    other_store = disk_store(other, tmp_path / "o", seed=0)
    with pytest.raises(StoreMismatchError, match=f"backbone {store.fingerprint[:16]}"):
        NearestNeighbors.open(saved, other_store)


def test_saved_index_errors(tmp_path: Path) -> None:
    stored = vectors(8, m=20)
    with pytest.raises(FileNotFoundError, match="no saved index"):
        NearestNeighbors.open(tmp_path / "missing.json", stored)
    (tmp_path / "other.json").write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a saved nearest-neighbour index"):
        NearestNeighbors.open(tmp_path / "other.json", stored)
    (tmp_path / "garbage.json").write_bytes(b"\x00\xff")
    with pytest.raises(ValueError, match="not a saved nearest-neighbour index"):
        NearestNeighbors.open(tmp_path / "garbage.json", stored)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        NearestNeighbors(stored).save(tmp_path)
    saved = NearestNeighbors(stored).save(tmp_path / "ok.json")
    assert NearestNeighbors.open(saved, stored).count == 20  # tensors reopen too
    with pytest.raises(StoreMismatchError, match="built for other features"):
        NearestNeighbors.open(saved, stored * 2)
    record = json.loads(saved.read_text(encoding="utf-8"))
    saved.write_text(json.dumps({**record, "version": 99}), encoding="utf-8")
    with pytest.raises(ValueError, match="newer dinov2-heads"):
        NearestNeighbors.open(saved, stored)


def test_fingerprint_tells_tensors_apart() -> None:
    stored = vectors(9, m=40)
    assert source_fingerprint(stored) == source_fingerprint(stored.clone())
    changed = stored.clone()
    changed[39, 0] += 1.0  # the last row is always probed
    assert source_fingerprint(changed) != source_fingerprint(stored)
    assert source_fingerprint(stored[:39]) != source_fingerprint(stored)


# ---------------------------------------------------------------------- errors


def test_bad_inputs_are_clear_errors() -> None:
    stored = vectors(10, m=20)
    search = NearestNeighbors(stored)
    with pytest.raises(ValueError, match="k = 21 is larger than the searched set"):
        search.search(stored[:1], k=21)
    for k in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="k must be a positive int"):
            search.search(stored[:1], k=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected queries of shape \(B, 16\)"):
        search.search(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"query.unsqueeze\(0\)"):
        search.search(stored[0])
    with pytest.raises(TypeError, match="floating point"):
        search.search(torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor or Features"):
        search.search([[0.0] * 16])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of torch, faiss"):
        NearestNeighbors(stored, backend="annoy")
    with pytest.raises(ValueError, match="pooling must be one of"):
        NearestNeighbors(stored, pooling="max")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        NearestNeighbors(stored, chunk_size=0)
    with pytest.raises(ValueError, match="got 3 paths for 20 stored samples"):
        NearestNeighbors(stored, paths=["a", "b", "c"])
    with pytest.raises(TypeError, match="one path per stored sample"):
        NearestNeighbors(stored, paths="images/")
    with pytest.raises(ValueError, match="nothing to search"):
        NearestNeighbors(torch.empty(0, 16))
    with pytest.raises(ValueError, match=r"shape \(M, D\)"):
        NearestNeighbors(torch.randn(4, 2, 16))


def test_dataset_file_name_is_the_one_extract_writes() -> None:
    from dinov2_heads.commands import extract

    assert extract.DATASET_FILE == DATASET_FILE


# ---------------------------------------------------------------------- faiss


def test_faiss_missing_names_the_package() -> None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("faiss is installed")
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        NearestNeighbors(vectors(11, m=10), backend="faiss")


def test_faiss_flat_agrees_with_the_exact_search(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    stored, queries = vectors(12), vectors(13, m=10)
    exact = NearestNeighbors(stored).search(queries, k=5)
    search = NearestNeighbors(stored, backend="faiss", chunk_size=64)
    approx = search.search(queries, k=5)
    assert torch.equal(approx.indices, exact.indices)
    torch.testing.assert_close(approx.similarities, exact.similarities, rtol=0, atol=1e-5)
    saved = search.save(tmp_path / "faiss.json")
    assert (tmp_path / "faiss.json.faiss").is_file()
    reopened = NearestNeighbors.open(saved, stored)
    assert reopened.backend == "faiss"
    assert torch.equal(reopened.search(queries, k=5).indices, exact.indices)
