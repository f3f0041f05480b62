"""Logistic regression: the optimum it reaches, the official sweep and split, the exported head."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import pytest
import torch

from dinov2_heads.features import Features
from dinov2_heads.heads import LinearHead
from dinov2_heads.neighbors import OFFICIAL_C, fit_logistic, logistic_regression
from dinov2_heads.neighbors.logistic import objective


def problem(
    seed: int = 0, m: int = 240, d: int = 6, k: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + 0.7 * torch.randn(m, k, generator=g, dtype=torch.float64)).argmax(dim=1)
    return x, y


def test_the_official_sweep() -> None:
    assert len(OFFICIAL_C) == 45
    assert OFFICIAL_C[0] == pytest.approx(1e-6, rel=1e-5)
    assert OFFICIAL_C[-1] == pytest.approx(1e5, rel=1e-5)


@pytest.mark.parametrize("c", [1e-3, 1.0, 100.0])
def test_the_solution_satisfies_the_optimality_condition(c: float) -> None:
    x, y = problem()
    weight, bias = fit_logistic(x, y, c)
    assert weight.dtype == torch.float64
    assert weight.shape == (3, 6)
    assert bias.shape == (3,)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    grads = torch.autograd.grad(objective(weight, bias, x, y, c), [weight, bias])
    # A strictly convex objective: a vanishing gradient means the one minimum was reached.
    assert max(float(g.abs().max()) for g in grads) < 1e-5
    # A weaker penalty (larger C) lets the weights grow.
    assert float(weight.detach().norm()) > 0


@pytest.mark.parametrize("c", [1e-2, 1.0, 30.0])
def test_matches_scikit_learn(c: float) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = problem(1)
    weight, bias = fit_logistic(x, y, c)
    reference = sklearn.LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(
        x.numpy(), y.numpy()
    )
    scale = max(1.0, float(abs(reference.coef_).max()))
    assert abs(reference.coef_ - weight.numpy()).max() < 1e-4 * scale
    # scikit-learn centres the multinomial intercepts; compare the differences between classes.
    ours = bias - bias.mean()
    theirs = torch.from_numpy(reference.intercept_ - reference.intercept_.mean())
    assert (ours - theirs).abs().max() < 1e-4 * scale


def test_sweep_chooses_on_a_held_out_tenth_and_exports_a_linear_head() -> None:
    x, y = problem(2, m=300)
    names = ["a", "b", "c"]
    result = logistic_regression(
        x, y, c_values=(1e-4, 1e-1, 10.0), test_features=x, test_labels=y, class_names=names
    )
    assert list(result.sweep) == pytest.approx([1e-4, 1e-1, 10.0])
    assert result.best_c == max(result.sweep, key=lambda c: result.sweep[c])
    assert result.sweep[1e-4] < result.sweep[result.best_c]
    head = result.head
    assert isinstance(head, LinearHead)
    assert list(head.class_names or ()) == names
    assert not head.avgpool
    # The head is the final fit on all 300 samples (train + held-out tenth) at the best C.
    weight, bias = fit_logistic(x, y, result.best_c)
    torch.testing.assert_close(head.weight, weight.float())
    torch.testing.assert_close(head.bias, bias.float())
    features = Features.from_tokens([x.float()], [torch.zeros(300, 1, 6)], (1, 1))
    predicted = head(features).argmax(dim=1)
    assert result.test_top1 == pytest.approx(
        100.0 * float((predicted == y).float().mean()), abs=0.5
    )
    assert "<- best" in result.table()


def test_a_given_validation_split_and_class_plus_patch_mean() -> None:
    x, y = problem(3, m=200, d=4)
    patches = torch.randn(200, 4, 4)
    features = Features.from_tokens([x.float()], [patches], (2, 2))
    result = logistic_regression(
        features[:150],
        y[:150],
        val_features=features[150:],
        val_labels=y[150:],
        c_values=(1.0,),
        pooling="class+patch_mean",
    )
    assert result.head.avgpool
    assert result.head.in_features == 8
    joined = torch.cat([x.float(), patches.mean(dim=1)], dim=1)[:150]
    weight, _ = fit_logistic(joined, y[:150], 1.0)
    torch.testing.assert_close(result.head.weight, weight.float())


def test_bad_input() -> None:
    x, y = problem()
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic(x, y, 0.0)
    with pytest.raises(ValueError, match="c_values"):
        logistic_regression(x, y, c_values=())
    with pytest.raises(ValueError, match="patch_mean"):
        logistic_regression(x, y, pooling="patch_mean")
    with pytest.raises(ValueError, match="labels of shape"):
        logistic_regression(x, y[:-1], c_values=(1.0,))


def test_each_c_is_logged_with_its_accuracy_and_the_best_so_far(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, y = problem(2, m=300)
    c_values = (1e-4, 1e-1, 10.0)
    with caplog.at_level(logging.INFO, logger="dinov2_heads.neighbors.logistic"):
        result = logistic_regression(x, y, c_values=c_values, progress=False)
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "dinov2_heads.neighbors.logistic"
        and record.getMessage().startswith("C =")
    ]
    assert len(lines) == len(c_values)
    best_c, best = 0.0, -1.0
    for done, (c, line) in enumerate(zip(c_values, lines, strict=True), 1):
        accuracy = result.sweep[c]
        if accuracy > best:
            best_c, best = c, accuracy
        assert line == (
            f"C = {c:.6g} ({done}/3): held-out top-1 {accuracy:.2f} %, "
            f"best so far {best:.2f} % at C = {best_c:.6g}"
        )
    assert best_c == result.best_c


def test_progress_counts_every_c_and_is_silent_when_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_tqdm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("tqdm"):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    # Without tqdm the progress helper writes log lines: the last one counts every C.
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    x, y = problem(2, m=120)
    with caplog.at_level(logging.INFO, logger="dinov2_heads.progress"):
        logistic_regression(x, y, c_values=(1e-2, 1.0, 10.0, 100.0), max_iter=20)
    shown = [r.getMessage() for r in caplog.records if r.name == "dinov2_heads.progress"]
    assert shown
    assert shown[-1].startswith("logistic regression: 4/4 values of C, ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dinov2_heads.progress"):
        logistic_regression(x, y, c_values=(1.0,), max_iter=20, progress=False)
    assert not [r for r in caplog.records if r.name == "dinov2_heads.progress"]
