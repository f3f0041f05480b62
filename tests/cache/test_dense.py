"""Dense heads from the feature cache: the chosen blocks, masks and depth maps in a store.

A head trained from a store must see what it sees from images: the same tokens of the same
blocks, the same targets. Float32 stores give the same losses and logits as training from images
(to 1e-5); float16 stores come close.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dinov2_heads import create_backbone
from dinov2_heads.cache import (
    DamagedStoreError,
    FeatureStore,
    StoreMismatchError,
    estimate_store_size,
    extract_features,
)
from dinov2_heads.dense import SegmentationLoss, SegmentationMetrics, Segmenter
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import (
    DepthLoss,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)
from tests.cache.conftest import Images, Samples, layout_of

CLASSES = 4
SIZE = (28, 42)
FIXTURES = Path(__file__).parent / "fixtures"


def backbone(seed: int = 0) -> nn.Module:
    """A 32-wide, 4-block ViT: enough blocks for the official four-block depth choice."""
    torch.manual_seed(seed)
    return create_backbone("dinov2_vits14", depth=4, embed_dim=32, num_heads=2, img_size=56)


class Pairs(Dataset[Any]):
    """``count`` images (3, 28, 42) with a mask (28, 42) int64 or a depth map (1, 28, 42).

    Masks hold classes 0..3 and 255 (no label) in a corner; depth maps hold metres in
    0.5..10.5 with 0 (invalid) in a corner. ``fail_at`` raises once, as an interruption would.
    """

    def __init__(
        self,
        count: int = 10,
        *,
        target: str = "mask",
        size: tuple[int, int] = SIZE,
        fail_at: int | None = None,
    ) -> None:
        self.count = count
        self.target = target
        self.size = size
        self.fail_at = fail_at
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if index == self.fail_at:
            self.fail_at = None
            raise RuntimeError(f"interrupted while reading sample {index}")
        self.reads.append(index)
        generator = torch.Generator().manual_seed(500 + index)
        image = torch.randn(3, *SIZE, generator=generator)
        if self.target == "mask":
            mask = torch.randint(0, CLASSES, self.size, generator=generator)
            mask[:3, :5] = 255
            return image, mask
        depth = 0.5 + 10 * torch.rand(1, *self.size, generator=generator)
        depth[:, :3, :5] = 0
        return image, depth


def images_and_targets(data: Dataset[Any]) -> tuple[Tensor, Tensor]:
    items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    return torch.stack([i for i, _ in items]), torch.stack([t for _, t in items])


def train(
    head: nn.Module,
    batches: Iterable[tuple[Features | Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    frozen: nn.Module | None = None,
) -> list[float]:
    """A few SGD steps; each step's loss. ``frozen`` turns image batches into features."""
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    head.train()
    losses = []
    for inputs, targets in batches:
        features = frozen(inputs) if frozen is not None else inputs
        assert isinstance(features, Features)
        loss = loss_fn(head(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    return SegmentationLoss()(logits, masks)


def depth_loss(prediction: Tensor, depths: Tensor) -> Tensor:
    return DepthLoss(max_depth=12.0, warm_up_steps=0)(prediction, depths).total


# ---------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("keep", ["pooled", "patch_tokens"])
def test_a_segmentation_head_trains_from_the_cache_as_from_images(
    keep: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    head = LinearSegmentationHead(32, CLASSES, layers=2, dropout=0.0)
    frozen = FrozenBackbone.for_heads(backbone(), head)
    data = Pairs(10)
    store = extract_features(
        frozen, data, path=tmp_path / "s", keep=keep, dtype=torch.float32, progress=False
    )
    # The two last blocks: in block_tokens, or in the patch tokens when those are kept.
    assert store.blocks == ((2, True), (3, True))
    assert store.layout.blocks == (((2, True), (3, True)) if keep == "pooled" else ())
    assert store.depth == 4

    from_images, from_cache = copy.deepcopy(head), copy.deepcopy(head)
    live = train(from_images, DataLoader(data, batch_size=4), segmentation_loss, frozen)
    cached = train(
        from_cache, store.dataset(heads=from_cache).loader(4), segmentation_loss, frozen=None
    )
    assert len(live) == len(cached) == 3
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(live), rtol=0, atol=1e-5)
    moved = (from_images.conv_seg.weight - head.conv_seg.weight).abs().max()
    assert moved > 1e-3  # the steps changed the head
    for key, value in from_images.state_dict().items():
        torch.testing.assert_close(from_cache.state_dict()[key], value, rtol=0, atol=1e-5)

    # Evaluation from the cache: logits resized to the masks, as Segmenter does for images.
    images, masks = images_and_targets(data)
    from_cache.eval()
    features, stored_masks = next(iter(store.dataset().loader(10)))
    assert stored_masks.dtype == torch.int64
    assert torch.equal(stored_masks, masks)
    with torch.no_grad():
        logits = F.interpolate(
            from_cache(features), size=SIZE, mode="bilinear", align_corners=False
        )
        reference = Segmenter(frozen, from_cache).eval().logits(images)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    cache_metrics, image_metrics = SegmentationMetrics(CLASSES), SegmentationMetrics(CLASSES)
    cache_metrics.update(logits, stored_masks)
    image_metrics.update(reference, masks)
    assert torch.equal(cache_metrics.confusion, image_metrics.confusion)


def test_a_float16_store_trains_close_to_images() -> None:
    torch.manual_seed(1)
    head = LinearSegmentationHead(32, CLASSES, layers=4, dropout=0.0)
    frozen = FrozenBackbone.for_heads(backbone(), head)
    data = Pairs(8)
    store = extract_features(frozen, data, progress=False)  # float16 by default
    assert store.layout.arrays["block_tokens"].dtype == "float16"
    assert store.layout.arrays["block_tokens"].shape == (4, 1 + 6, 32)
    from_images, from_cache = copy.deepcopy(head), copy.deepcopy(head)
    live = train(from_images, DataLoader(data, batch_size=4), segmentation_loss, frozen)
    cached = train(from_cache, store.dataset().loader(4), segmentation_loss)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(live), rtol=1e-2, atol=1e-3)
    for key, value in from_images.state_dict().items():
        torch.testing.assert_close(from_cache.state_dict()[key], value, rtol=1e-2, atol=1e-3)


def test_masks_are_stored_as_uint8_at_the_image_size(tmp_path: Path) -> None:
    head = LinearSegmentationHead(32, CLASSES)
    frozen = FrozenBackbone.for_heads(backbone(), head)
    data = Pairs(5)
    store = extract_features(frozen, data, path=tmp_path / "s", batch_size=2, progress=False)
    spec = store.layout.arrays["labels"]
    assert (spec.dtype, spec.shape) == ("uint8", SIZE)
    assert (tmp_path / "s" / "labels.bin").stat().st_size == 5 * 28 * 42
    assert store.array("labels").dtype == torch.uint8
    _, masks = images_and_targets(data)
    labels = store.labels(slice(None))
    assert isinstance(labels, Tensor)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, masks)
    assert int(labels[0, 0, 0]) == 255

    # uint8 masks from the data are stored alike; the class names of the one label are kept.
    uint8 = Samples([(image, mask.to(torch.uint8)) for image, mask in (data[i] for i in range(5))])
    named = extract_features(frozen, uint8, class_names={"parts": "abcd"}, progress=False)
    assert named.label_names == ("parts",)
    assert named.class_names == {"parts": ("a", "b", "c", "d")}
    assert torch.equal(named.array("labels"), store.array("labels"))


def test_manifest_records_the_blocks_and_the_depth(tmp_path: Path) -> None:
    heads = MultiHead(
        {
            "parts": LinearSegmentationHead(32, CLASSES, layers=2),
            "depth": LinearDepthHead(32, layers=4),
            "kind": LinearHead(32, 3, n_blocks=1),
        }
    )
    frozen = FrozenBackbone.for_heads(backbone(), heads)
    store = extract_features(frozen, Pairs(3), path=tmp_path / "s", progress=False)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["version"] == 3
    assert manifest["depth"] == 4
    assert manifest["blocks"] == [
        [0, False],
        [1, False],
        [2, False],
        [2, True],
        [3, False],
        [3, True],
    ]
    assert manifest["arrays"]["block_tokens"]["shape"] == [6, 7, 32]
    reopened = FeatureStore.open(tmp_path / "s", backbone=frozen, input_size=SIZE)
    assert reopened.layout == store.layout
    reopened.check_heads(heads)
    features = reopened.features([0, 2])
    live = frozen(torch.stack([Pairs(3)[i][0] for i in (0, 2)]))
    assert features.depth == live.depth == 4
    for index, norm in reopened.layout.blocks:
        for ours, theirs in zip(
            features.block(index, norm=norm), live.block(index, norm=norm), strict=True
        ):
            torch.testing.assert_close(ours, theirs.half().float())
    assert "blocks=[(0, False)" in repr(reopened)

    manifest["arrays"]["block_tokens"]["shape"] = [5, 7, 32]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DamagedStoreError, match=r"'arrays.block_tokens.shape' must be \[6, 7, 32\]"
    ):
        FeatureStore.open(tmp_path / "s")


def test_the_size_estimate_counts_blocks_and_masks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = LinearSegmentationHead(32, CLASSES, layers=2)
    frozen = FrozenBackbone.for_heads(backbone(), head)
    with caplog.at_level(logging.INFO, logger="dinov2_heads.cache"):
        store = extract_features(frozen, Pairs(6), path=tmp_path / "s", progress=False)
    # Per sample: class tokens (2 x 32) and patch mean (32), two blocks of 1 + 6 tokens in
    # float16; a 28x42 uint8 mask; an int64 id.
    per_sample = (2 * 32 + 32 + 2 * 7 * 32) * 2 + 28 * 42 + 8
    assert store.nbytes == 6 * per_sample
    assert estimate_store_size(frozen, SIZE, 6, labels="mask") == store.nbytes
    lines = [r.getMessage() for r in caplog.records if "samples x" in r.getMessage()]
    assert len(lines) == 1
    assert "blocks=[(2, True), (3, True)]" in lines[0]
    assert "labels uint8[28,42]" in lines[0]
    # Everything is logged before the first file is written: the log comes before the commit.
    depth_frozen = FrozenBackbone.for_heads(backbone(), DPTDepthHead(32, channels=8))
    depth_store = extract_features(depth_frozen, Pairs(2, target="depth"), progress=False)
    assert estimate_store_size(depth_frozen, SIZE, 2, labels="depth") == depth_store.nbytes
    assert estimate_store_size(frozen, SIZE, 2, labels=None) == 2 * (per_sample - 28 * 42)
    with pytest.raises(ValueError, match="labels must be"):
        estimate_store_size(frozen, SIZE, 2, labels="masks")  # type: ignore[arg-type]


def test_masks_next_to_pooled_tokens_only_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.cache"):
        extract_features(FrozenBackbone(backbone()), Pairs(2), progress=False)
    assert any("no dense head can train" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- mistakes


def test_mask_mistakes_are_clear_errors() -> None:
    frozen = FrozenBackbone.for_heads(backbone(), LinearSegmentationHead(32, CLASSES))
    with pytest.raises(ValueError, match=r"mask .* of 14x21 but its images are 28x42"):
        extract_features(frozen, Pairs(2, size=(14, 21)), progress=False)
    image, mask = Pairs(1)[0]
    with pytest.raises(ValueError, match=r"values \[300\] outside 0..255"):
        extract_features(
            frozen, Samples([(image, torch.where(mask == 1, 300, mask))]), progress=False
        )
    # A later batch with a mask of another size: the batches before stay, the error is clear.
    items = [Pairs(2)[i] for i in range(2)] + [(image, mask[:14])] * 2
    with pytest.raises(ValueError, match=r"samples 2..3.*14x42 but its images are 28x42"):
        extract_features(frozen, Samples(items), batch_size=2, progress=False)
    # Classes beyond the class names given.
    with pytest.raises(ValueError, match=r"classes \[3\] but the label has 3 class names"):
        extract_features(frozen, Pairs(2), class_names={"parts": "abc"}, progress=False)
    # Float masks after int masks.
    items = [Pairs(2)[i] for i in range(2)] + [(image, mask.float())]
    with pytest.raises(ValueError, match="holds float32 values"):
        extract_features(frozen, Samples(items), batch_size=2, progress=False)


def test_a_depth_map_that_overflows_float16_is_refused() -> None:
    frozen = FrozenBackbone.for_heads(backbone(), LinearDepthHead(32))
    image, depth = Pairs(1, target="depth")[0]
    far = Samples([(image, depth * 1e4)])
    with pytest.raises(ValueError, match=r"beyond the float16 range.*dtype=torch.float32"):
        extract_features(frozen, far, progress=False)
    store = extract_features(frozen, far, dtype=torch.float32, progress=False)
    assert store.layout.arrays["labels"].dtype == "float32"


def test_blocks_the_backbone_does_not_have_are_refused() -> None:
    with pytest.raises(ValueError, match="block 7 is out of range for a backbone of depth 4"):
        FrozenBackbone(backbone(), blocks=[(7, False)])
    with pytest.raises(ValueError, match="reads the last 6 blocks but the backbone has 4"):
        FrozenBackbone.for_heads(backbone(), LinearSegmentationHead(32, CLASSES, layers=6))


def test_a_head_that_needs_blocks_the_store_lacks_is_refused(tmp_path: Path) -> None:
    frozen = FrozenBackbone(backbone(), n_last_blocks=1)
    store = extract_features(frozen, Pairs(2), keep="patch_tokens", progress=False)
    assert store.blocks == ((3, True),)
    store.check_heads(LinearSegmentationHead(32, CLASSES, layers=1))
    with pytest.raises(StoreMismatchError) as error:
        store.dataset(heads=LinearSegmentationHead(32, CLASSES, layers=2))
    message = str(error.value)
    assert "LinearSegmentationHead reads blocks [(2, True), (3, True)]" in message
    assert "holds [(3, True)]" in message
    assert "FrozenBackbone.for_heads(backbone, heads)" in message
    multi = MultiHead({"depth": LinearDepthHead(32, layers=4)})
    with pytest.raises(StoreMismatchError, match=r"LinearDepthHead reads blocks \[\(0, False\)"):
        store.dataset(heads=multi)
    with pytest.raises(StoreMismatchError, match="class tokens of the last 2 blocks"):
        store.dataset(heads=LinearHead(32, 3, n_blocks=2))
    with pytest.raises(TypeError, match="heads must be a head"):
        store.dataset(heads="LinearSegmentationHead")  # type: ignore[arg-type]
    # Without the check, the first batch names the blocks held and how to get the others.
    features, _ = next(iter(store.dataset().loader(2)))
    with pytest.raises(ValueError, match="do not hold block 0 with norm=False"):
        LinearDepthHead(32, layers=4)(features)


# ---------------------------------------------------------------------- resume, old stores


def test_a_dense_store_resumes_after_an_interruption(tmp_path: Path) -> None:
    heads = MultiHead(
        {"parts": LinearSegmentationHead(32, CLASSES, layers=2), "d": LinearDepthHead(32)}
    )
    frozen = FrozenBackbone.for_heads(backbone(), heads)
    reference = extract_features(frozen, Pairs(9), batch_size=2, progress=False)
    path = tmp_path / "s"
    data = Pairs(9, fail_at=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(frozen, data, path=path, batch_size=2, progress=False)
    assert len(FeatureStore.open(path, allow_incomplete=True)) == 4
    data.reads.clear()
    store = extract_features(frozen, data, path=path, batch_size=2, progress=False)
    assert data.reads == [4, 5, 6, 7, 8]
    assert layout_of(store) == layout_of(reference)
    for name in reference.layout.arrays:
        assert torch.equal(store.array(name), reference.array(name)), name
    store.verify()

    # Other blocks: refused, for a finished store and for one in progress alike.
    heads["d"] = LinearDepthHead(32, layers=4)
    other = FrozenBackbone.for_heads(backbone(), heads)
    assert other.n_last_blocks == frozen.n_last_blocks
    with pytest.raises(StoreMismatchError, match=r"blocks \(index, final norm\)"):
        extract_features(other, Pairs(9), path=path, batch_size=2, progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(frozen, Pairs(9, fail_at=3), path=cut, batch_size=2, progress=False)
    with pytest.raises(StoreMismatchError, match=r"blocks \(index, final norm\)"):
        extract_features(other, Pairs(9), path=cut, batch_size=2, progress=False)


def test_a_version_2_store_opens_and_serves_a_segmentation_head(tmp_path: Path) -> None:
    store = FeatureStore.open(FIXTURES / "store_v2_patch_tokens", input_size=SIZE)
    assert store.manifest.version == 2
    assert store.layout.depth is None
    assert store.depth == 2  # from the recorded backbone configuration
    assert store.blocks == ((0, True), (1, True))
    head = LinearSegmentationHead(32, CLASSES, layers=2)
    features, _ = next(iter(store.dataset(heads=head).loader(4)))
    assert head(features).shape == (4, CLASSES, 2, 3)
    with pytest.raises(StoreMismatchError, match=r"reads blocks \[\(1, False\)\]"):
        store.check_heads(LinearDepthHead(32))


def test_an_interrupted_version_2_store_resumes(frozen: FrozenBackbone, tmp_path: Path) -> None:
    path = tmp_path / "store"
    shutil.copytree(FIXTURES / "store_v2_interrupted", path)
    data = Images(5, labels="columns")
    store = extract_features(frozen, data, path=path, batch_size=2, progress=False)
    assert data.reads == [2, 3, 4]
    fresh = extract_features(frozen, Images(5, labels="columns"), batch_size=2, progress=False)
    for name in fresh.layout.arrays:
        assert torch.equal(store.array(name), fresh.array(name)), name
    manifest = json.loads((path / "manifest.json").read_text())
    assert (manifest["version"], manifest["depth"], manifest["blocks"]) == (3, 2, [])


def test_a_memory_store_of_features_keeps_their_blocks() -> None:
    heads = MultiHead({"d": LinearDepthHead(32, layers=4), "s": LinearSegmentationHead(32, 2)})
    frozen = FrozenBackbone.for_heads(backbone(), heads)
    images, masks = images_and_targets(Pairs(3))
    live = frozen(images)
    store = FeatureStore.from_features(live, masks)
    assert store.layout.blocks == tuple(sorted(live.blocks))
    assert store.depth == 4
    features = store.features(slice(None))
    heads.eval()
    for name, output in heads(features).items():
        torch.testing.assert_close(output, heads(live)[name], rtol=0, atol=1e-6)
    assert torch.equal(store.labels(slice(None)), masks)  # type: ignore[arg-type]
    copied = store.to_memory()
    assert copied.layout == store.layout


# ---------------------------------------------------------------------- depth


@pytest.mark.parametrize(
    "make_head",
    [lambda: LinearDepthHead(32, layers=4, max_depth=12.0), lambda: DPTDepthHead(32, channels=8)],
    ids=["linear4", "dpt"],
)
def test_a_depth_head_trains_from_the_cache_as_from_images(
    make_head: Callable[[], nn.Module],
) -> None:
    torch.manual_seed(2)
    head = make_head()
    frozen = FrozenBackbone.for_heads(backbone(), head)
    data = Pairs(8, target="depth")
    store = extract_features(frozen, data, dtype=torch.float32, progress=False)
    assert store.layout.blocks == ((0, False), (1, False), (2, False), (3, False))
    spec = store.layout.arrays["labels"]
    assert (spec.dtype, spec.shape) == ("float32", (1, *SIZE))
    from_images, from_cache = copy.deepcopy(head), copy.deepcopy(head)
    live = train(from_images, DataLoader(data, batch_size=4), depth_loss, frozen)
    cached = train(from_cache, store.dataset(heads=from_cache).loader(4), depth_loss)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(live), rtol=0, atol=1e-5)
    for key, value in from_images.state_dict().items():
        torch.testing.assert_close(from_cache.state_dict()[key], value, rtol=0, atol=1e-5)

    # float16 (the default): depth maps in float16 too, read back as float32.
    half = extract_features(frozen, data, progress=False)
    assert half.layout.arrays["labels"].dtype == "float16"
    _, depths = images_and_targets(data)
    stored = half.labels(slice(None))
    assert isinstance(stored, Tensor)
    assert stored.dtype == torch.float32
    torch.testing.assert_close(stored, depths, rtol=1e-3, atol=0)
    approximate = copy.deepcopy(head)
    close = train(approximate, half.dataset().loader(4), depth_loss)
    torch.testing.assert_close(torch.tensor(close), torch.tensor(live), rtol=1e-2, atol=1e-3)
