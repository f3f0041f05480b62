"""Logistic regression on frozen features, as the official DINOv2 evaluation runs it, in torch.

The official ``dinov2/eval/log_regression.py`` fits cuML's ``LogisticRegression`` (L2 penalty,
L-BFGS, float64, ``tol=1e-12``, up to 1,000 iterations) for 45 values of ``C`` spread evenly in
log space over ``1e-6 .. 1e5``, picks the ``C`` with the best top-1 accuracy on a held-out tenth
of the training set (or a given split), then refits on both and reports the test accuracy.

Here the same problem is solved with ``torch.optim.LBFGS`` (strong-Wolfe line search) on the CPU
or a GPU, no cuML needed. The objective is the usual one, ``0.5 * ||W||^2 + C * sum_i CE_i``,
with the intercept not penalised; it is divided by ``C * M`` before solving, which changes the
scale but not the solution. What differs from cuML: torch's line search stops after 25
evaluations where cuML allows 50, and the L-BFGS history is 5 pairs as cuML's default. Both solve
a strictly convex problem to the same optimum within the tolerance; the tests check the
optimality condition directly and compare with scikit-learn when it is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import distributed
from dinov2_heads.heads import LinearHead
from dinov2_heads.neighbors.labels import source_labels
from dinov2_heads.neighbors.pooling import Source, as_matrix, check_matrix, check_pooling
from dinov2_heads.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["OFFICIAL_C", "LogisticRegressionResult", "fit_logistic", "logistic_regression"]

#: The official sweep: 45 values of C, ``10 ** linspace(-6, 5, 45)``.
OFFICIAL_C: tuple[float, ...] = tuple((10 ** torch.linspace(-6, 5, 45)).tolist())
#: The official solver settings.
OFFICIAL_MAX_ITER = 1_000
OFFICIAL_TOL = 1e-12


@dataclass(frozen=True)
class LogisticRegressionResult:
    """What :func:`logistic_regression` found.

    Attributes:
        head: The refitted classifier as a :class:`~dinov2_heads.LinearHead` (float32 weights),
            with class names when given: it saves, predicts and exports like any head.
        best_c: The chosen C.
        sweep: ``{C: held-out top-1 accuracy in %}`` for every C tried.
        test_top1: Top-1 accuracy in % on the test features, when given.
    """

    head: LinearHead
    best_c: float
    sweep: dict[float, float] = field(repr=False)
    test_top1: float | None = None

    def table(self) -> str:
        """The sweep as a plain-text table, the chosen C marked."""
        lines = [f"{'C':>12}  {'top-1 %':>8}"]
        for c, accuracy in self.sweep.items():
            mark = "  <- best" if c == self.best_c else ""
            lines.append(f"{c:>12.6g}  {accuracy:>8.2f}{mark}")
        return "\n".join(lines)


def objective(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, c: float) -> Tensor:
    """``(0.5 * ||W||^2 + C * sum_i CE_i) / (C * M)``: the penalised loss that is minimised."""
    logits = x @ weight.T + bias
    return F.cross_entropy(logits, y) + 0.5 * weight.pow(2).sum() / (c * x.shape[0])


def fit_logistic(
    features: Tensor,
    labels: Tensor,
    c: float,
    *,
    num_classes: int | None = None,
    max_iter: int = OFFICIAL_MAX_ITER,
    tol: float = OFFICIAL_TOL,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with an L2 penalty, fitted by L-BFGS in float64.

    Args:
        features: (M, D) training features (any float dtype; solved in float64 on their device).
        labels: (M,) class indices.
        c: Inverse penalty strength C.
        num_classes: C classes; ``max(labels) + 1`` by default.
        max_iter: L-BFGS iterations at most.
        tol: Gradient and change tolerance.

    Returns:
        ``weight`` (K, D) and ``bias`` (K,) in float64.
    """
    if isinstance(c, bool) or not isinstance(c, int | float) or not c > 0:
        raise ValueError(f"C must be positive, got {c!r}")
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a (M, D) tensor, got {type(features).__name__}")
    check_matrix(features)
    if features.shape[0] == 0:
        raise ValueError("there is nothing to fit: the features hold no samples")
    checked, k = source_labels(features, labels, features.shape[0], num_classes=num_classes)
    x = features.to(torch.float64)
    y = checked.to(device=x.device, dtype=torch.long)
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, device=x.device, requires_grad=True)
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=tol,
        history_size=5,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        solver.zero_grad()
        loss = objective(weight, bias, x, y, c)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        solver.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach(), bias.detach()


def _accuracy(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor) -> float:
    predicted = (x.to(weight.dtype) @ weight.T + bias).argmax(dim=1)
    return 100.0 * float((predicted == y.to(predicted.device)).float().mean()) if len(y) else 0.0


def _split(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # The official split: seed 0, a random tenth held out for choosing C.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(x.device)
    held = order[: len(x) // 10]
    kept = order[len(x) // 10 :]
    return x[kept], y[kept], x[held], y[held]


def logistic_regression(
    train_features: Source,
    train_labels: Tensor | None = None,
    *,
    val_features: Source | None = None,
    val_labels: Tensor | None = None,
    test_features: Source | None = None,
    test_labels: Tensor | None = None,
    c_values: Sequence[float] = OFFICIAL_C,
    max_iter: int = OFFICIAL_MAX_ITER,
    tol: float = OFFICIAL_TOL,
    num_classes: int | None = None,
    pooling: str = "class",
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> LogisticRegressionResult:
    """The official logistic-regression protocol: sweep C, choose on held-out data, refit.

    Under torchrun the values of C are spread over the processes (process r fits every
    world-size-th C from r), the held-out accuracies are gathered, and every process refits the
    chosen C, so all return the same head.

    Args:
        train_features: (M, D) features, :class:`~dinov2_heads.Features` or a feature store.
        train_labels: (M,) class indices (``None`` reads a store's labels).
        val_features: Features to choose C on; ``None`` holds out a random tenth of the training
            set (seed 0, as the official code), which is added back for the final fit.
        val_labels: Their labels.
        test_features: Optional features to report the final accuracy on.
        test_labels: Their labels.
        c_values: The C values to try (the official 45 by default).
        max_iter: L-BFGS iterations per fit.
        tol: Solver tolerance.
        num_classes: K; ``max(label) + 1`` over the training labels by default.
        pooling: ``"class"`` (official) or ``"class+patch_mean"`` for :class:`Features` and
            stores; the returned head reads the same input (``avgpool`` on for the latter).
        class_names: K names saved with the head.
        device: Where to solve; the features' device by default.
        progress: Show a progress bar over the values of C (tqdm, or log lines without it;
            under torchrun on the first process only). Each C tried is also logged (INFO) with
            its held-out accuracy and the best so far.

    Returns:
        A :class:`LogisticRegressionResult` whose ``head`` is a ``LinearHead``.
    """
    check_pooling(pooling)
    if pooling == "patch_mean":
        raise ValueError(
            'pooling="patch_mean" has no LinearHead equivalent; use "class" (the official '
            'choice) or "class+patch_mean"'
        )
    if not c_values or any(
        isinstance(c, bool) or not isinstance(c, int | float) or not c > 0 for c in c_values
    ):
        raise ValueError(f"c_values must be positive numbers, got {c_values!r}")
    x, y, k = _matrix(train_features, train_labels, device, pooling, num_classes=num_classes)
    if x.shape[0] == 0:
        raise ValueError("there is nothing to fit: the training features hold no samples")
    if val_features is None:
        fit_x, fit_y, held_x, held_y = _split(x, y)
    else:
        fit_x, fit_y = x, y
        held_x, held_y, _ = _matrix(val_features, val_labels, x.device, pooling, x.shape[1])

    mine = _sweep(
        fit_x,
        fit_y,
        held_x,
        held_y,
        c_values,
        num_classes=k,
        max_iter=max_iter,
        tol=tol,
        progress=progress,
    )
    found: dict[int, float] = {}
    for part in distributed.gather_objects(mine):
        found.update(part)
    sweep = {float(c_values[i]): found[i] for i in range(len(c_values))}
    best_c = max(sweep, key=lambda c: sweep[c])  # the first (smallest) C on a tie

    weight, bias = fit_logistic(
        torch.cat([fit_x, held_x]) if val_features is None else x,
        torch.cat([fit_y, held_y]) if val_features is None else y,
        best_c,
        num_classes=k,
        max_iter=max_iter,
        tol=tol,
    )
    head = _as_head(weight, bias, pooling, class_names)
    test_top1 = None
    if test_features is not None:
        tx, ty, _ = _matrix(test_features, test_labels, x.device, pooling, x.shape[1])
        test_top1 = _accuracy(weight, bias, tx, ty)
    result = LogisticRegressionResult(head, best_c, sweep, test_top1)
    logger.info("logistic regression sweep:\n%s", result.table())
    return result


def _sweep(
    fit_x: Tensor,
    fit_y: Tensor,
    held_x: Tensor,
    held_y: Tensor,
    c_values: Sequence[float],
    *,
    num_classes: int,
    max_iter: int,
    tol: float,
    progress: bool,
) -> dict[int, float]:
    """This process's share of the sweep: ``{index of C: held-out top-1 %}``, each C logged."""
    indices = range(distributed.rank(), len(c_values), distributed.world_size())
    mine: dict[int, float] = {}
    best_c, best = 0.0, -1.0
    with Progress(
        len(indices),
        "logistic regression",
        unit="values of C",
        enabled=progress and distributed.rank() == 0,
    ) as bar:
        for done, index in enumerate(indices, 1):
            c = float(c_values[index])
            weight, bias = fit_logistic(
                fit_x, fit_y, c, num_classes=num_classes, max_iter=max_iter, tol=tol
            )
            mine[index] = _accuracy(weight, bias, held_x, held_y)
            if mine[index] > best:  # the first C wins a tie, as in the final choice
                best_c, best = c, mine[index]
            logger.info(
                "C = %.6g (%d/%d): held-out top-1 %.2f %%, best so far %.2f %% at C = %.6g",
                c,
                done,
                len(indices),
                mine[index],
                best,
                best_c,
            )
            bar.update(1)
    return mine


def _matrix(
    source: Source,
    labels: Tensor | None,
    device: torch.device | str | None,
    pooling: str,
    width: int | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Checked (M, D) float64 features, (M,) labels and K; ``width`` is the training D."""
    x = as_matrix(source, pooling)
    check_matrix(x, "features" if width is None else "held-out or test features", width)
    y, k = source_labels(source, labels, int(x.shape[0]), num_classes=num_classes)
    target = torch.device(device) if device is not None else x.device
    return x.to(target, torch.float64), y.to(target), k


def _as_head(
    weight: Tensor, bias: Tensor, pooling: str, class_names: Sequence[str] | None
) -> LinearHead:
    k, width = weight.shape
    avgpool = pooling == "class+patch_mean"
    embed_dim = width // 2 if avgpool else width
    head = LinearHead(embed_dim, k, avgpool=avgpool, class_names=class_names)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head
