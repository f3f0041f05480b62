"""Training loops: the same code from live images and from cached features."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureDataset, extract_features
from dinov2_heads.dense import SegmentationLoss
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import (
    DepthLoss,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
    MultiHeadLoss,
)
from dinov2_heads.training import (
    LinearProbeGrid,
    evaluate_grid,
    features_of,
    fit_grid,
    split_batch,
    train_one_epoch,
)
from tests.training.conftest import dataset, separable


class Pictures(Dataset[tuple[torch.Tensor, dict[str, int]]]):
    """Random 28x28 images with two label columns."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, int]]:
        image = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(index))
        return image, {"colour": index % 3, "type": index % 2}


@pytest.fixture(scope="module")
def frozen() -> FrozenBackbone:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=4, embed_dim=16, num_heads=2, img_size=28)
    return FrozenBackbone(backbone, n_last_blocks=4)


def test_cached_and_live_training_give_the_same_grid(frozen: FrozenBackbone) -> None:
    store = extract_features(frozen, Pictures(), dtype=torch.float32, progress=False)
    grids = []
    for data, kwargs in (
        (FeatureDataset(store, label="colour"), {}),
        (Pictures(), {"frozen": frozen, "label": "colour"}),
    ):
        torch.manual_seed(0)
        grid = LinearProbeGrid(16, 3, learning_rates=(0.01, 0.1))
        history = fit_grid(grid, data, epochs=2, batch_size=8, progress=False, **kwargs)  # type: ignore[arg-type]
        assert history.steps == 4
        assert len(history.epoch_loss) == 2
        grids.append(grid)
    for a, b in zip(grids[0].parameters(), grids[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    cached = evaluate_grid(grids[0], FeatureDataset(store, label="colour"))
    live = evaluate_grid(grids[1], Pictures(), frozen=frozen, label="colour")
    assert [r.accuracy for r in cached.rows] == [r.accuracy for r in live.rows]


def test_train_one_epoch_for_a_single_head() -> None:
    torch.manual_seed(0)
    features, labels = separable(64, seed=0)
    head = LinearHead(16, 4, n_blocks=1, avgpool=True)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    loader = dataset(features, labels).loader(16, shuffle=True, seed=0)
    losses = [
        train_one_epoch(head, loader, optimizer, torch.nn.functional.cross_entropy)[0]
        for _ in range(3)
    ]
    assert losses[-1] < losses[0]
    accuracy = (head(features).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_train_one_epoch_trains_several_heads_like_a_hand_written_loop(
    frozen: FrozenBackbone,
) -> None:
    # MultiHead + MultiHeadLoss with dict labels: no label= and every head steps, from live
    # images here; the result equals the loop users would write by hand.
    def heads() -> MultiHead:
        torch.manual_seed(0)
        return MultiHead({"colour": LinearHead(16, 3), "type": LinearHead(16, 2)})

    loss_fn = MultiHeadLoss()
    loader = DataLoader(Pictures(), batch_size=8)
    trained = heads()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    mean_loss, steps = train_one_epoch(trained, loader, optimizer, loss_fn, frozen=frozen)
    assert steps == 2

    by_hand = heads()
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    totals = []
    for images, labels in loader:
        total, _ = loss_fn(by_hand(frozen(images)), labels)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert mean_loss == pytest.approx(sum(totals) / len(totals), rel=1e-6)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(value, by_hand.state_dict()[name], rtol=0, atol=1e-6)
    assert not torch.equal(trained["type"].weight, heads()["type"].weight)


class Scenes(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random 28x42 images with a mask (28, 42) of 3 classes or a depth map (1, 28, 42)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, 28, 42, generator=generator)
        if self.target == "mask":
            return image, torch.randint(0, 3, (28, 42), generator=generator)
        return image, 1 + 5 * torch.rand(1, 28, 42, generator=generator)


@pytest.mark.parametrize("target", ["mask", "depth"])
def test_train_one_epoch_trains_a_dense_head_from_the_cache_as_from_images(
    frozen: FrozenBackbone, target: str
) -> None:
    # DepthLoss returns a named tuple (total, sig, gradient): its total is the loss.
    def head() -> torch.nn.Module:
        torch.manual_seed(0)
        if target == "mask":
            return LinearSegmentationHead(16, 3, layers=2, dropout=0.0)
        return LinearDepthHead(16, layers=4, max_depth=8.0)

    loss_fn = SegmentationLoss() if target == "mask" else DepthLoss(warm_up_steps=0)
    backbone = FrozenBackbone.for_heads(frozen.backbone, head())
    store = extract_features(backbone, Scenes(target), dtype=torch.float32, progress=False)
    results = []
    for batches, kwargs in (
        (store.dataset(heads=head()).loader(4), {}),
        (DataLoader(Scenes(target), batch_size=4), {"frozen": backbone}),
    ):
        trained = head()
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
        loss, steps = train_one_epoch(trained, batches, optimizer, loss_fn, **kwargs)  # type: ignore[arg-type]
        assert steps == 2
        results.append((loss, trained.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    for name, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][name], rtol=0, atol=1e-5)


def test_train_one_epoch_refuses_a_loss_that_is_not_a_scalar() -> None:
    features, labels = separable(16, seed=0)
    head = LinearHead(16, 4)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    loader = dataset(features, labels).loader(8)

    def per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    with pytest.raises(TypeError, match=r"scalar tensor.*got \(8,\)"):
        train_one_epoch(head, loader, optimizer, per_sample)


def test_a_diverged_head_never_wins() -> None:
    grid = LinearProbeGrid(16, 4, learning_rates=(0.1, 0.2), n_blocks=(1,), avgpool=(False,))
    with torch.no_grad():
        grid.head_groups[0].weight[1] = float("nan")
    results = evaluate_grid(grid, DataLoader(dataset(*separable(32, seed=3)), batch_size=None))
    assert results.rows[1].accuracy == 0.0
    assert results.best.index == 0


def test_features_of_and_split_batch(frozen: FrozenBackbone) -> None:
    images = torch.randn(2, 3, 28, 28)
    features = features_of(images, frozen)
    assert features.n_blocks == 4
    assert features_of(features) is features
    with pytest.raises(ValueError, match="frozen=FrozenBackbone"):
        features_of(images)
    with pytest.raises(TypeError, match="images"):
        features_of("images")  # type: ignore[arg-type]
    labels = {"colour": torch.tensor([1, 2])}
    assert split_batch((images, labels), "colour")[1].tolist() == [1, 2]
    with pytest.raises(ValueError, match="label='colour'"):
        split_batch((images, labels))
    with pytest.raises(ValueError, match="not columns"):
        split_batch((images, torch.tensor([1, 2])), "colour")
    with pytest.raises(TypeError, match="labelled batches"):
        split_batch(images)


def test_fit_grid_errors() -> None:
    grid = LinearProbeGrid(16, 4, learning_rates=(0.1,), n_blocks=(1,), avgpool=(False,))
    data = dataset(*separable(8, seed=0))
    with pytest.raises(ValueError, match="no full batch"):
        fit_grid(grid, data, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit_grid(grid, data, epochs=0, progress=False)
