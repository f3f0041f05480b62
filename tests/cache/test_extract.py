"""extract_features: what is stored, in memory and on disk, and how it comes back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dinov2_heads.cache import FeatureStore, estimate_store_size, extract_features
from dinov2_heads.features import Features, FrozenBackbone
from tests.cache.conftest import Images, Samples, layout_of

ARRAYS = ("class_tokens", "patch_mean", "sample_ids", "labels")


def live(frozen: FrozenBackbone, data: Images, indices: list[int]):
    return frozen(torch.stack([data.image(i) for i in indices]))


def test_disk_store_equals_live_features_in_float32(frozen: FrozenBackbone, tmp_path: Path) -> None:
    data = Images(10)
    store = extract_features(
        frozen, data, path=tmp_path / "s", dtype=torch.float32, batch_size=4, progress=False
    )
    assert len(store) == 10
    assert store.complete
    features = store.features([3, 7])
    reference = live(frozen, data, [3, 7])
    assert features.n_blocks == 2
    assert features.patch_tokens is None  # pooled-only by default
    assert features.grid == (2, 3)
    for ours, theirs in zip(features.class_tokens, reference.class_tokens, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(features.patch_mean, reference.patch_mean, rtol=0, atol=1e-6)
    assert torch.equal(store.labels([3, 7]), torch.tensor([0, 1]))
    assert torch.equal(store.sample_ids(), torch.arange(10))


def test_float16_default_comes_back_float32(frozen: FrozenBackbone) -> None:
    data = Images(5)
    store = extract_features(frozen, data, batch_size=2, progress=False)
    assert store.dtype == torch.float16
    assert store.array("class_tokens").dtype == torch.float16
    features = store.features(slice(0, 5))
    assert features.class_token.dtype == torch.float32
    reference = live(frozen, data, list(range(5)))
    torch.testing.assert_close(
        features.class_token, reference.class_token.half().float(), rtol=0, atol=0
    )


def test_memory_and_disk_stores_are_identical(frozen: FrozenBackbone, tmp_path: Path) -> None:
    data = Images(9, labels="columns")
    disk = extract_features(frozen, data, path=tmp_path / "s", batch_size=4, progress=False)
    memory = extract_features(frozen, data, batch_size=3, progress=False)
    assert memory.path is None
    assert layout_of(disk) == layout_of(memory)
    for name in ("class_tokens", "patch_mean", "sample_ids", "labels.0", "labels.1"):
        assert torch.equal(disk.array(name), memory.array(name)), name
    assert disk.label_columns == ["colour", "type"]
    columns = disk.labels(slice(0, 4))
    assert isinstance(columns, dict)
    assert torch.equal(columns["colour"], torch.tensor([0, 1, 2, 0]))
    assert torch.equal(disk.labels([5], column="type"), torch.tensor([1]))


def test_patch_and_register_tokens(frozen_reg: FrozenBackbone, tmp_path: Path) -> None:
    data = Images(4)
    store = extract_features(
        frozen_reg, data, path=tmp_path / "s", keep="all", dtype=torch.float32, progress=False
    )
    assert store.keep == ("class_tokens", "patch_mean", "patch_tokens", "register_tokens")
    features = store.features([1, 2])
    reference = live(frozen_reg, data, [1, 2])
    assert features.patch_tokens is not None
    assert reference.patch_tokens is not None
    assert features.register_tokens is not None
    assert features.register_tokens.shape == (2, 4, 32)
    for ours, theirs in zip(features.patch_tokens, reference.patch_tokens, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert store.layout.num_register_tokens == 4
    # n_blocks keeps the last blocks only.
    last = store.features([1, 2], n_blocks=1)
    assert last.n_blocks == 1
    assert torch.equal(last.class_token, features.class_token)


def test_all_without_registers_keeps_patch_tokens_only(frozen: FrozenBackbone) -> None:
    store = extract_features(frozen, Images(3), keep="all", progress=False)
    assert store.keep == ("class_tokens", "patch_mean", "patch_tokens")
    with pytest.raises(ValueError, match="register tokens"):
        extract_features(frozen, Images(3), keep=["register_tokens"], progress=False)


@pytest.mark.parametrize(
    ("kind", "shape", "dtype"),
    [("multi", (5,), torch.int64), ("none", None, None)],
)
def test_label_kinds(
    frozen: FrozenBackbone, kind: str, shape: tuple[int, ...] | None, dtype: torch.dtype | None
) -> None:
    store = extract_features(frozen, Images(6, labels=kind), batch_size=4, progress=False)
    if shape is None:
        assert not store.has_labels
        with pytest.raises(ValueError, match="no labels"):
            store.labels(0)
        return
    labels = store.labels(slice(0, 6))
    assert isinstance(labels, torch.Tensor)
    assert labels.shape == (6, *shape)
    assert labels.dtype == dtype
    assert torch.equal(labels[5], torch.tensor([1, 0, 1, 0, 0]))


def test_data_loader_with_ids_and_float_labels(frozen: FrozenBackbone) -> None:
    images = torch.stack([Images().image(i) for i in range(6)])
    labels = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    data = TensorDataset(images, labels, torch.arange(70, 76))
    store = extract_features(frozen, DataLoader(data, batch_size=3), progress=False)
    assert torch.equal(store.sample_ids(), torch.tensor([70, 71, 72, 73, 74, 75]))
    labels = store.labels(slice(None))
    assert isinstance(labels, torch.Tensor)
    assert labels.dtype == torch.float32
    assert torch.equal(labels, torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5]))


def test_data_loader_batch_size_is_used_and_shuffling_refused(frozen: FrozenBackbone) -> None:
    data = Images(7)
    store = extract_features(frozen, DataLoader(data, batch_size=5), batch_size=2, progress=False)
    assert len(store) == 7
    assert torch.equal(store.sample_ids(), torch.arange(7))
    with pytest.raises(ValueError, match="shuffle=False"):
        extract_features(frozen, DataLoader(data, batch_size=2, shuffle=True), progress=False)


def test_size_is_logged_before_writing_and_estimated(
    frozen: FrozenBackbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = Images(8)
    with caplog.at_level(logging.INFO, logger="dinov2_heads.cache"):
        store = extract_features(frozen, data, path=tmp_path / "s", progress=False)
    size_lines = [r.getMessage() for r in caplog.records if "samples x" in r.getMessage()]
    assert size_lines, "the store size was not logged"
    # Per sample: class tokens (2 x 32) + patch mean (32) in float16, an int64 id and label.
    per_sample = (2 * 32 + 32) * 2 + 8 + 8
    assert f"8 samples x {per_sample} B" in size_lines[0]
    assert store.nbytes == 8 * per_sample
    assert estimate_store_size(frozen, (28, 42), 8) == store.nbytes
    assert estimate_store_size(frozen, (28, 42), 8, keep="patch_tokens") == 8 * (
        per_sample + 2 * 6 * 32 * 2
    )
    for name in ARRAYS:
        spec = store.layout.arrays[name]
        assert (tmp_path / "s" / spec.file).stat().st_size == 8 * spec.row_bytes


def test_manifest_records_the_run(frozen: FrozenBackbone, tmp_path: Path) -> None:
    extract_features(
        frozen,
        Images(3),
        path=tmp_path / "s",
        preprocessing={"resize": (28, 42), "mean": "imagenet"},
        progress=False,
    )
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format"] == "dinov2-heads/feature-store"
    assert manifest["backbone"]["fingerprint"] == FeatureStore.open(tmp_path / "s").fingerprint
    assert manifest["backbone"]["config"]["embed_dim"] == 32
    assert manifest["input_size"] == [28, 42]
    assert manifest["preprocessing"] == {"mean": "imagenet", "resize": [28, 42]}
    assert manifest["keep"] == ["class_tokens", "patch_mean"]
    assert (manifest["count"], manifest["written"], manifest["complete"]) == (3, 3, True)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "class_tokens.bin",
        "labels.bin",
        "manifest.json",
        "patch_mean.bin",
        "sample_ids.bin",
    ]


def test_bad_arguments(frozen: FrozenBackbone, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        extract_features(frozen, Images(2), keep="everything", progress=False)
    with pytest.raises(ValueError, match="unknown token arrays"):
        extract_features(frozen, Images(2), keep=["cls"], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        extract_features(frozen, Images(2), dtype=torch.int8, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        extract_features(frozen, Images(0), progress=False)
    with pytest.raises(TypeError, match="each batch"):
        extract_features(frozen, Samples([{"image": torch.zeros(3, 28, 28)}]), progress=False)
    with pytest.raises(TypeError, match="a torch Dataset, a DataLoader or an image tensor"):
        extract_features(frozen, [torch.zeros(3, 28, 28)], progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a feature store"):
        extract_features(frozen, Images(2), path=tmp_path / "notes", progress=False)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        extract_features(frozen, Images(2), path=tmp_path / "notes", overwrite=True, progress=False)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


class Scaled(torch.nn.Module):
    """A frozen backbone whose features are multiplied by ``factor``."""

    def __init__(self, frozen: FrozenBackbone, factor: float) -> None:
        super().__init__()
        self.frozen = frozen
        self.factor = factor

    def forward(self, images: torch.Tensor) -> Features:
        return self.frozen(images).apply(lambda t: t * self.factor)


def test_non_finite_features_are_refused_before_they_are_stored(
    frozen: FrozenBackbone, tmp_path: Path
) -> None:
    data = Images(6)
    images = [data[i] for i in range(6)]
    images[4] = (torch.full_like(images[4][0], float("nan")), images[4][1])
    path = tmp_path / "store"
    # FrozenBackbone refuses the NaN image itself (its index within the batch of samples 4, 5).
    with pytest.raises(ValueError, match=r"sample 4 .*not finite|samples 0 of the batch"):
        extract_features(frozen, Samples(images), path=path, batch_size=2, progress=False)
    assert len(FeatureStore.open(path, allow_incomplete=True)) == 4
    # float32 features beyond the float16 range would become inf in the store.
    with pytest.raises(ValueError, match=r"sample 0 .*float16 range"):
        extract_features(Scaled(frozen, 1e6), Images(2), progress=False)
    store = extract_features(Scaled(frozen, 1e6), Images(2), dtype=torch.float32, progress=False)
    assert store.features(slice(None)).class_token.isfinite().all()
