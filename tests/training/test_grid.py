"""LinearProbeGrid: the official grid of linear heads as batched tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov2_heads.cache import FeatureDataset, FeatureStore
from dinov2_heads.heads import LinearHead, linear_input
from dinov2_heads.training import (
    OFFICIAL_LEARNING_RATES,
    GridSGD,
    HeadSpec,
    LinearProbeGrid,
    evaluate_grid,
    fit_grid,
)
from tests.training.conftest import dataset, random_features, separable


def test_default_grid_is_the_official_one() -> None:
    grid = LinearProbeGrid(8, 3)
    assert len(grid) == 52
    assert OFFICIAL_LEARNING_RATES[0] == 1e-5
    assert len(OFFICIAL_LEARNING_RATES) == 13
    # The official order: n_blocks, then avgpool, then learning rate.
    assert grid.specs[0] == HeadSpec(1, False, 1e-5)
    assert grid.specs[13] == HeadSpec(1, True, 1e-5)
    assert grid.specs[26] == HeadSpec(4, False, 1e-5)
    assert grid.specs[51] == HeadSpec(4, True, 0.1)
    assert grid.names[6] == "classifier_1_blocks_avgpool_False_lr_0_00100"
    assert len(set(grid.names)) == 52
    assert [tuple(g.weight.shape) for g in grid.head_groups] == [
        (13, 3, 8),
        (13, 3, 16),
        (13, 3, 32),
        (13, 3, 40),
    ]
    assert sorted(grid.state_dict()) == [
        f"groups.{i}.{p}" for i in range(4) for p in ("bias", "weight")
    ]


def test_official_names_use_the_scaled_lr() -> None:
    assert (
        HeadSpec(4, True, 1e-3).official_name(1024) == "classifier_4_blocks_avgpool_True_lr_0_00400"
    )
    assert (
        HeadSpec(1, False, 0.1).official_name(256) == "classifier_1_blocks_avgpool_False_lr_0_10000"
    )
    assert (
        HeadSpec(1, True, 1e-5).official_name(128) == "classifier_1_blocks_avgpool_True_lr_0_00001"
    )


def test_logits_equal_one_linear_head_each() -> None:
    torch.manual_seed(0)
    grid = LinearProbeGrid(8, 3)
    with torch.no_grad():
        for group in grid.head_groups:
            group.bias.normal_()
    features = random_features(batch=5, dim=8, n_blocks=4)
    logits = grid(features)
    assert logits.shape == (5, 52, 3)
    assert logits.dtype == torch.float32
    for index in (0, 7, 13, 30, 51):
        head = grid.head(index)
        torch.testing.assert_close(logits[:, index], head(features), rtol=1e-6, atol=1e-6)


def test_batched_update_equals_52_separate_sgd_updates() -> None:
    torch.manual_seed(0)
    batch, steps = 16, 6
    grid = LinearProbeGrid(8, 5)
    heads = [grid.head(i) for i in range(len(grid))]
    separate = [nn.Linear(h.in_features, 5) for h in heads]
    for linear, head in zip(separate, heads, strict=True):
        linear.load_state_dict({"weight": head.weight, "bias": head.bias})
    reference = torch.optim.SGD(
        [
            {"params": linear.parameters(), "lr": spec.lr * batch / 256}
            for linear, spec in zip(separate, grid.specs, strict=True)
        ],
        momentum=0.9,
        weight_decay=0,
    )
    reference_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=steps)
    optimizer = grid.make_optimizer(batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for step in range(steps):
        features = random_features(batch=batch, dim=8, n_blocks=4, seed=step)
        labels = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(step))
        loss = grid.loss(grid(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

        total = sum(
            F.cross_entropy(linear(linear_input(features, s.n_blocks, s.avgpool)), labels)
            for linear, s in zip(separate, grid.specs, strict=True)
        )
        torch.testing.assert_close(loss, total, rtol=1e-6, atol=1e-6)
        reference.zero_grad()
        total.backward()
        reference.step()
        reference_schedule.step()
    for index, linear in enumerate(separate):
        weight, bias = grid.head_weights(index)
        torch.testing.assert_close(weight, linear.weight.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(bias, linear.bias.detach(), rtol=0, atol=1e-6)
    # The heads moved, by different amounts: the check above is not comparing initial weights.
    moved = [(grid.head_weights(i)[0] - heads[i].weight).abs().max() for i in (0, 12)]
    assert moved[1] > 100 * moved[0] > 0


def test_picks_the_learning_rate_that_is_clearly_right() -> None:
    """Only lr 0.1 moves the heads away from their random start within 4 short epochs."""
    torch.manual_seed(0)
    train, val = dataset(*separable(256, seed=0)), dataset(*separable(256, seed=1))
    grid = LinearProbeGrid(
        16,
        4,
        learning_rates=(1e-5, 0.1, 1e-3),
        n_blocks=(1,),
        avgpool=(False,),
        class_names=["north", "east", "south", "west"],
    )
    fit_grid(grid, train, epochs=4, batch_size=32, progress=False)
    results = evaluate_grid(grid, val)
    accuracy = {row.spec.lr: row.accuracy for row in results.rows}
    assert accuracy[0.1] > 0.9
    assert accuracy[1e-5] < 0.5
    assert accuracy[1e-3] < 0.6
    assert results.best.spec == HeadSpec(1, False, 0.1)
    assert str(results).splitlines()[1].split()[:3] == ["1", "False", "0.1"]

    best = grid.best()
    assert isinstance(best, LinearHead)
    assert best.class_names == ("north", "east", "south", "west")
    assert set(best.state_dict()) == {"weight", "bias", "_extra_state"}
    features, labels = separable(256, seed=1)
    assert (best(features).argmax(-1) == labels).float().mean().item() == pytest.approx(
        accuracy[0.1]
    )


def test_best_head_loads_into_the_official_linear_layer() -> None:
    grid = LinearProbeGrid(8, 3, learning_rates=(0.01,), n_blocks=(4,), avgpool=(True,))
    features = random_features(batch=6, dim=8)
    head = grid.head(0)
    assert set(head.state_dict()) == {"weight", "bias"}
    official = nn.Linear(5 * 8, 3)
    official.load_state_dict(head.state_dict(), strict=True)
    # The official hub head: cat(class tokens of the 4 last blocks, mean patch token).
    inputs = torch.cat([*features.class_tokens, features.patch_mean], dim=-1)
    torch.testing.assert_close(official(inputs), grid(features)[:, 0])


def test_official_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    grid = LinearProbeGrid(8, 3, learning_rates=(1e-4, 1e-3))
    official = grid.official_state_dict(batch_size=1024)
    assert "classifiers_dict.classifier_4_blocks_avgpool_True_lr_0_00400.linear.weight" in official
    # As the official run saves it: DDP's "module." prefix inside the checkpointer's "model".
    checkpoint = {
        "model": {f"module.{k}": v for k, v in official.items()},
        "iteration": 12499,
    }
    torch.save(checkpoint, tmp_path / "model_final.pth")
    loaded = LinearProbeGrid.from_official(
        tmp_path / "model_final.pth", class_names=["a", "b", "c"]
    )
    assert len(loaded) == 8
    assert loaded.embed_dim == 8
    assert loaded.num_classes == 3
    assert loaded.names == [
        name.removesuffix(".linear.weight").split(".")[1]
        for name in official
        if name.endswith("weight")
    ]
    head = loaded.head("classifier_4_blocks_avgpool_True_lr_0_00400")
    assert (head.n_blocks, head.avgpool, head.class_names) == (4, True, ("a", "b", "c"))
    original = grid.head(HeadSpec(4, True, 1e-3))
    assert torch.equal(head.weight, original.weight)
    assert torch.equal(head.bias, original.bias)
    # A plain state dict without any prefix loads too.
    plain = {k.removeprefix("classifiers_dict."): v for k, v in official.items()}
    assert LinearProbeGrid.from_official(plain).names == loaded.names


def test_errors() -> None:
    grid = LinearProbeGrid(8, 3)
    with pytest.raises(ValueError, match="last 4 blocks but the features hold 1"):
        grid(random_features(dim=8, n_blocks=1))
    with pytest.raises(ValueError, match="D = 8 but the features have D = 4"):
        grid(random_features(dim=4))
    with pytest.raises(TypeError, match="takes Features"):
        grid(torch.zeros(2, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="evaluate"):
        grid.best()
    with pytest.raises(KeyError, match="no head named"):
        grid.head("classifier_2_blocks_avgpool_True_lr_0_00100")
    with pytest.raises(IndexError):
        grid.head(52)
    with pytest.raises(ValueError, match="official name"):
        LinearProbeGrid(8, 3, learning_rates=(1e-6, 2e-6))
    with pytest.raises(ValueError, match="at least one head"):
        LinearProbeGrid(8, 3, learning_rates=())
    with pytest.raises(ValueError, match="class names"):
        LinearProbeGrid(8, 3, class_names=["a"])
    with pytest.raises(ValueError, match="no official linear heads"):
        LinearProbeGrid.from_official({"weight": torch.zeros(3, 8)})
    with pytest.raises(ValueError, match="labels of shape"):
        grid.loss(torch.zeros(2, 52, 3), torch.zeros(2, 1))


def test_grid_sgd_checks_its_groups() -> None:
    weight = nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="head_lr"):
        GridSGD([{"params": [weight]}])
    with pytest.raises(ValueError, match="does not stack 4 heads"):
        GridSGD([{"params": [weight], "head_lr": torch.ones(4)}])
    optimizer = GridSGD([{"params": [weight], "head_lr": torch.tensor([1.0, 2.0, 0.0])}])
    weight.grad = torch.ones(3, 2)
    optimizer.step()
    assert weight.detach().tolist() == [[-1.0, -1.0], [-2.0, -2.0], [0.0, 0.0]]
    assert "momentum_buffer" in optimizer.state_dict()["state"][0]


def test_labels_out_of_range_or_not_integers_are_refused() -> None:
    grid = LinearProbeGrid(8, 3, learning_rates=(0.1,))
    features = random_features(batch=4, dim=8)
    logits = grid(features)
    with pytest.raises(ValueError, match=r"label 3 is out of range for 3 classes \(valid: 0\.\.2"):
        grid.loss(logits, torch.tensor([0, 1, 3, -100]))
    with pytest.raises(ValueError, match="label -1 is out of range"):
        grid.loss(logits, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        grid.loss(logits, torch.tensor([0.0, 1.5, 2.0, 1.0]))
    assert grid.loss(logits, torch.tensor([0, 1, 2, -100])).isfinite()
    with pytest.raises(ValueError, match="label 5 is out of range for 3 classes"):
        evaluate_grid(grid, dataset(features, torch.tensor([0, 1, 5, 2])))
    with pytest.raises(TypeError, match="integer class indices"):
        evaluate_grid(grid, dataset(features, torch.tensor([0.0, 1.5, 2.0, 1.0])))
    # Negative labels are unlabelled samples in evaluation, as documented.
    assert evaluate_grid(grid, dataset(features, torch.tensor([0, 1, -1, -100]))).best.count == 2


def test_evaluate_takes_the_label_column_its_error_asks_for() -> None:
    features, labels = separable(8, seed=0)
    store = FeatureStore.from_features(features, {"colour": labels, "type": labels % 2})
    grid = LinearProbeGrid(16, 4, learning_rates=(0.1,), n_blocks=(1,))
    with pytest.raises(ValueError, match="choose one with label="):
        evaluate_grid(grid, FeatureDataset(store))
    by_argument = evaluate_grid(grid, FeatureDataset(store), label="colour")
    by_dataset = evaluate_grid(grid, FeatureDataset(store, label="colour"))
    assert by_argument.to_dicts() == by_dataset.to_dicts()
