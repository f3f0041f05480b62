"""A store reads only the parts its reader needs, and the heads compute exactly the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from dinov2_heads import create_backbone
from dinov2_heads.cache import (
    DamagedStoreError,
    FeatureDataset,
    FeatureParts,
    FeatureStore,
    collate_features,
    extract_features,
)
from dinov2_heads.cache.manifest import BLOCK_ARRAY, TOKEN_ARRAYS
from dinov2_heads.cache.parts import parts_for_heads
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import (
    HEAD_TYPES,
    Conv1dNeck,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)
from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid
from tests.cache.conftest import Images

D, CLASSES, GRID = 32, 3, (2, 3)

#: One head of every registered type, on the store below (a 4-block backbone, 28x42 images).
HEADS: dict[str, Callable[[], nn.Module]] = {
    "LinearHead": lambda: LinearHead(D, CLASSES, n_blocks=2),
    "Conv1dNeck": lambda: Conv1dNeck(GRID, D, CLASSES),
    "LinearSegmentationHead": lambda: LinearSegmentationHead(D, CLASSES, layers=2),
    "LinearDepthHead": lambda: LinearDepthHead(D, layers=2),
    "DPTDepthHead": lambda: DPTDepthHead(D, channels=8),
}


def every_head() -> MultiHead:
    return MultiHead({name: make() for name, make in HEADS.items()})


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that keeps everything: patch, register tokens and chosen blocks of 4 blocks."""
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14_reg", depth=4, embed_dim=D, num_heads=2, img_size=56)
    frozen = FrozenBackbone.for_heads(backbone, every_head(), n_last_blocks=2)
    where = tmp_path_factory.mktemp("parts") / "store"
    extract_features(frozen, Images(12), path=where, keep="all", progress=False)
    return where


@pytest.fixture
def store(path: Path) -> FeatureStore:
    """Opened afresh for each test: nothing mapped yet."""
    return FeatureStore.open(path)


def cut(store: FeatureStore, *names: str) -> None:
    """Empty the files of ``names`` under the open store: reading them now raises."""
    assert store.path is not None
    for name in names:
        (store.path / store.layout.arrays[name].file).write_bytes(b"")


class OwnHead(nn.Module):
    """A head of one's own that declares no parts: everything is read for it."""

    def forward(self, features: Features) -> Tensor:
        return features.class_token


def test_the_store_holds_every_part(store: FeatureStore) -> None:
    assert store.keep == TOKEN_ARRAYS
    assert store.layout.blocks == ((0, False), (1, False), (2, False), (3, False))
    assert (2, True) in store.blocks
    assert (3, True) in store.blocks


def test_every_registered_head_type_is_covered() -> None:
    assert set(HEADS) == set(HEAD_TYPES)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_each_head_type_computes_the_same_from_what_it_reads(
    name: str, store: FeatureStore
) -> None:
    torch.manual_seed(1)
    head = HEADS[name]()
    rows = [7, 0, 3, 11, 5]
    (everything, _labels) = FeatureDataset(store, label="label").__getitems__(rows)[0]
    (needed, _) = FeatureDataset(store, label="label", heads=head).__getitems__(rows)[0]
    head.eval()
    with torch.no_grad():
        assert torch.equal(head(needed), head(everything))
    # One training step from each: the same loss and the same gradients.
    head.train()
    results = []
    for features in (everything, needed):
        torch.manual_seed(2)
        head.zero_grad()
        output = head(features)
        output.float().square().mean().backward()
        results.append([p.grad.clone() for p in head.parameters() if p.grad is not None])
    assert results[0]
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_what_each_head_type_reads(store: FeatureStore) -> None:
    rows = [1, 2]

    def read(head: nn.Module) -> Features:
        features: Features = FeatureDataset(store, heads=head).__getitems__(rows)[0][0]
        return features

    linear = read(HEADS["LinearHead"]())
    assert linear.patch_tokens is None
    assert linear.register_tokens is None
    assert dict(linear.blocks) == {}
    segmentation = read(HEADS["LinearSegmentationHead"]())  # the last two blocks, normed
    assert segmentation.patch_tokens is not None
    assert dict(segmentation.blocks) == {}
    assert segmentation.register_tokens is None
    depth = read(HEADS["LinearDepthHead"]())
    assert depth.patch_tokens is None
    assert sorted(depth.blocks) == [(1, False), (3, False)]
    neck = read(HEADS["Conv1dNeck"]())  # the last block's patch tokens and the class token
    assert neck.patch_tokens is not None
    assert neck.register_tokens is None
    assert dict(neck.blocks) == {}
    own = read(OwnHead())  # declares nothing: everything
    assert own.patch_tokens is not None
    assert own.register_tokens is not None
    assert sorted(own.blocks) == list(store.layout.blocks)


def test_a_multi_head_reads_what_any_of_its_heads_reads(store: FeatureStore) -> None:
    pooled_and_depth = MultiHead(
        {"brand": HEADS["LinearHead"](), "depth": HEADS["LinearDepthHead"]()}
    )
    parts = store.parts_for(pooled_and_depth)
    assert parts == FeatureParts(("class_tokens", "patch_mean"), ((1, False), (3, False)))
    nested = MultiHead({"inner": MultiHead({"neck": HEADS["Conv1dNeck"]()})})
    assert store.parts_for(nested) == FeatureParts(("class_tokens", "patch_mean", "patch_tokens"))
    with_own = MultiHead({"inner": MultiHead({"own": OwnHead()}), "brand": LinearHead(D, 2)})
    assert store.parts_for(with_own) is None
    heads = every_head().eval()
    rows = [4, 9, 2]
    everything = store.features(rows)
    needed = store.features(rows, parts=store.parts_for(heads))
    with torch.no_grad():
        for name, output in heads(needed).items():
            assert torch.equal(output, heads[name](everything)), name


def test_the_grid_computes_and_trains_the_same_from_pooled_tokens(path: Path) -> None:
    store = FeatureStore.open(path)
    full = FeatureDataset(store, label="label")
    sampler = DistributedSampler(full, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    everything = DataLoader(
        full, batch_size=4, sampler=sampler, drop_last=True, collate_fn=collate_features
    )

    def grid() -> LinearProbeGrid:
        torch.manual_seed(3)
        return LinearProbeGrid(D, CLASSES, n_blocks=(1, 2), learning_rates=(0.01, 0.1))

    reference, narrowed = grid(), grid()
    fit_grid(reference, everything, epochs=1, batch_size=4, progress=False)
    assert not torch.equal(reference.groups[0].weight, grid().groups[0].weight)
    assert "patch_tokens" in store._mapped
    pooled_only = FeatureStore.open(path)
    # The grid's reads never touch the patch tokens, the registers or the chosen blocks.
    cut(pooled_only, "patch_tokens", "register_tokens", BLOCK_ARRAY)
    try:
        dataset = FeatureDataset(pooled_only, label="label")
        fit_grid(narrowed, dataset, epochs=1, batch_size=4, progress=False)
        for a, b in zip(reference.parameters(), narrowed.parameters(), strict=True):
            assert torch.equal(a, b)
        first = evaluate_grid(reference, FeatureDataset(store, label="label"), batch_size=5)
        second = evaluate_grid(narrowed, dataset, batch_size=5)
        assert first.to_dicts() == second.to_dicts()
        # The dataset itself is left as it was given: it still reads everything.
        with pytest.raises(DamagedStoreError):
            dataset[0]
    finally:
        extract_again(path)


def extract_again(path: Path) -> None:
    """Put back the files that a test cut (the store is module-wide)."""
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14_reg", depth=4, embed_dim=D, num_heads=2, img_size=56)
    frozen = FrozenBackbone.for_heads(backbone, every_head(), n_last_blocks=2)
    extract_features(frozen, Images(12), path=path, keep="all", progress=False, overwrite=True)


def test_pooled_reads_touch_only_the_pooled_files(path: Path) -> None:
    store = FeatureStore.open(path)
    cut(store, "patch_tokens", "register_tokens", BLOCK_ARRAY)
    try:
        pooled = store.features(slice(2, 6), parts="pooled")
        assert pooled.patch_tokens is None
        assert pooled.register_tokens is None
        assert dict(pooled.blocks) == {}
        assert pooled.batch_size == 4
        with pytest.raises(DamagedStoreError, match=r"patch_tokens\.bin"):
            store.features(slice(2, 6))
    finally:
        extract_again(path)


def test_parts_pick_token_arrays_and_blocks(store: FeatureStore) -> None:
    rows = torch.tensor([3, 1])
    everything = store.features(rows)
    registers = store.features(rows, parts=["register_tokens"])
    assert registers.patch_tokens is None
    assert registers.register_tokens is not None
    assert everything.register_tokens is not None
    assert torch.equal(registers.register_tokens, everything.register_tokens)
    block = store.features(rows, parts=FeatureParts(blocks=[(2, False)]))
    assert list(block.blocks) == [(2, False)]
    assert torch.equal(block.block_map(2, norm=False), everything.block_map(2, norm=False))
    # A block among the last normed ones comes from the patch tokens.
    last = store.features(rows, parts=FeatureParts(blocks=[(3, True)]))
    assert last.patch_tokens is not None
    assert torch.equal(last.block_map(3, norm=True), everything.block_map(3, norm=True))
    assert store.features(rows, parts="patch_tokens").patch_tokens is not None
    same = store.features(rows, parts="all")
    assert same.patch_tokens is not None
    assert same.register_tokens is not None
    assert dict(same.blocks) == {}
    # n_blocks: only the last blocks are read, equal to the same blocks of a full read.
    one = store.features(rows, n_blocks=1, parts="patch_tokens")
    assert one.n_blocks == 1
    assert one.patch_tokens is not None
    assert everything.patch_tokens is not None
    assert torch.equal(one.patch_tokens[0], everything.patch_tokens[-1])
    assert torch.equal(one.class_token, everything.class_token)


def test_a_part_the_store_lacks_is_left_out(tmp_path: Path, frozen: FrozenBackbone) -> None:
    store = extract_features(frozen, Images(4), path=tmp_path / "pooled", progress=False)
    features = store.features([0, 1], parts=FeatureParts(("patch_tokens",), ((1, True),)))
    assert features.patch_tokens is None
    assert dict(features.blocks) == {}


def test_heads_given_parts_they_lack_fail_clearly(store: FeatureStore) -> None:
    pooled = FeatureDataset(store, heads=LinearHead(D, CLASSES)).__getitems__([0, 1])[0][0]
    with pytest.raises(ValueError, match=r"Conv1dNeck needs every patch token.*read it for this"):
        HEADS["Conv1dNeck"]()(pooled)
    for name in ("LinearSegmentationHead", "LinearDepthHead", "DPTDepthHead"):
        with pytest.raises(ValueError, match=r"do not hold block .*read it for this head"):
            HEADS[name]()(pooled)
    depth_only = store.features([0, 1], parts=FeatureParts(blocks=[(1, False), (3, False)]))
    with pytest.raises(ValueError, match="do not hold block"):
        HEADS["DPTDepthHead"]()(depth_only)


def test_explicit_parts_win_over_heads(store: FeatureStore) -> None:
    dataset = FeatureDataset(store, heads=OwnHead(), parts="pooled")
    assert dataset.parts == FeatureParts()
    assert FeatureDataset(store).parts is None
    assert FeatureDataset(store, heads=OwnHead()).parts is None
    narrowed = FeatureDataset(store, label="label", return_ids=True).for_heads(LinearHead(D, 2))
    assert narrowed.parts == FeatureParts()
    assert narrowed.label == "label"
    assert narrowed.return_ids
    assert store.dataset(parts="pooled").parts == FeatureParts()


def test_parts_mistakes_are_clear_errors(store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="not a preset"):
        store.features(0, parts="compact")
    with pytest.raises(ValueError, match=r"unknown token arrays \['patch'\]"):
        store.features(0, parts=["patch"])
    with pytest.raises(TypeError, match="parts must be"):
        store.features(0, parts=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="absolute block index"):
        FeatureParts(blocks=[(-1, True)])
    with pytest.raises(ValueError, match="absolute block index"):
        FeatureParts(blocks=[(1, 1)])  # type: ignore[list-item]

    class Declares(nn.Module):
        feature_parts = "class_tokens"

    with pytest.raises(TypeError, match=r"Declares\.feature_parts must be a tuple"):
        FeatureDataset(store, heads=Declares())

    class Unknown(nn.Module):
        feature_parts = ("class_tokens", "masks")

    with pytest.raises(ValueError, match=r"Unknown\.feature_parts: unknown token arrays"):
        parts_for_heads(Unknown(), 4)


def test_a_dense_head_on_a_store_without_depth_reads_everything() -> None:
    assert parts_for_heads(LinearDepthHead(D), None) is None
    assert parts_for_heads(LinearHead(D, 2), None) == FeatureParts()


def test_parts_in_memory_equal_on_disk(store: FeatureStore) -> None:
    memory = store.to_memory()
    head = HEADS["LinearDepthHead"]().eval()
    parts = memory.parts_for(head)
    rows = slice(0, 12, 3)
    on_disk = store.features(rows, parts=parts)
    in_memory = memory.features(rows, parts=parts)
    assert sorted(on_disk.blocks) == sorted(in_memory.blocks) == [(1, False), (3, False)]
    with torch.no_grad():
        assert torch.equal(head(on_disk), head(in_memory))


def test_worker_processes_read_the_same_parts(store: FeatureStore) -> None:
    dataset = FeatureDataset(store, label="label", heads=HEADS["LinearDepthHead"]())
    loader = DataLoader(dataset, batch_size=6, num_workers=1, collate_fn=collate_features)
    features, labels = next(iter(loader))
    assert sorted(features.blocks) == [(1, False), (3, False)]
    assert features.patch_tokens is None
    expected = store.features(slice(0, 6), parts=dataset.parts)
    assert torch.equal(features.block_map(3, norm=False), expected.block_map(3, norm=False))
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
