"""``LinearProbeGrid``: the official grid of linear heads, trained together in one pass."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dinov2_heads.checkpoints import read_checkpoint_file
from dinov2_heads.features import Features
from dinov2_heads.heads import LinearHead
from dinov2_heads.heads.class_names import check_class_names
from dinov2_heads.labels import check_class_labels
from dinov2_heads.training.optim import GridSGD

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_LEARNING_RATES",
    "GridResult",
    "GridResults",
    "HeadSpec",
    "LinearProbeGrid",
]

#: The learning rates of the official linear evaluation (``dinov2/eval/linear.py``), before
#: the ``lr * batch_size / 256`` scaling.
OFFICIAL_LEARNING_RATES: tuple[float, ...] = (
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    0.1,
)

# classifier_{n}_blocks_avgpool_{True|False}_lr_{0_00100}.linear.{weight|bias}, maybe behind
# "module." (DistributedDataParallel) and "classifiers_dict.".
_OFFICIAL_KEY = re.compile(
    r"^(?:module\.)?(?:classifiers_dict\.)?classifier_(?P<n>\d+)_blocks_avgpool_"
    r"(?P<avgpool>True|False)_lr_(?P<int>\d+)_(?P<frac>\d+)\.linear\.(?P<kind>weight|bias)$"
)


def official_lr_text(lr: float) -> str:
    """A learning rate as the official head names write it: ``0.001`` -> ``"0_00100"``."""
    return f"{lr:.5f}".replace(".", "_")


@dataclass(frozen=True)
class HeadSpec:
    """One head of a grid: which features it reads and its learning rate.

    Attributes:
        n_blocks: Class tokens of the last n blocks (oldest first) are its input.
        avgpool: Also the mean patch token of the last block.
        lr: Learning rate before the ``lr * batch_size / 256`` scaling.
    """

    n_blocks: int
    avgpool: bool
    lr: float

    @property
    def name(self) -> str:
        """The official name, e.g. ``classifier_4_blocks_avgpool_True_lr_0_00100``.

        The official evaluation writes the lr after scaling by ``batch_size / 256``; this is
        the name at a global batch of 256 (see :meth:`official_name`).
        """
        return self.official_name(256)

    def official_name(self, batch_size: int) -> str:
        """The official name of this head when trained at global batch ``batch_size``."""
        scaled = self.lr * batch_size / 256
        lr = official_lr_text(scaled)
        return f"classifier_{self.n_blocks}_blocks_avgpool_{self.avgpool}_lr_{lr}"

    def input_dim(self, embed_dim: int) -> int:
        """Width of its input: ``(n_blocks + avgpool) * D``."""
        return (self.n_blocks + int(self.avgpool)) * embed_dim


@dataclass(frozen=True)
class GridResult:
    """The validation result of one head."""

    index: int
    spec: HeadSpec
    accuracy: float
    loss: float
    count: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class GridResults:
    """Per-head validation results of a :class:`LinearProbeGrid`, as a table.

    ``str(results)`` prints the table sorted by accuracy; :attr:`best` is the head with the
    highest top-1 accuracy, the first one in grid order on ties (as the official code picks).
    """

    rows: tuple[GridResult, ...]

    @property
    def best(self) -> GridResult:
        best = self.rows[0]
        for row in self.rows[1:]:
            if row.accuracy > best.accuracy:
                best = row
        return best

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per head (for JSON or a DataFrame)."""
        return [
            {
                "name": row.name,
                "n_blocks": row.spec.n_blocks,
                "avgpool": row.spec.avgpool,
                "lr": row.spec.lr,
                "accuracy": row.accuracy,
                "loss": row.loss,
                "count": row.count,
            }
            for row in self.rows
        ]

    def table(self, top: int | None = None) -> str:
        """The results sorted by accuracy (best first), ``top`` rows at most."""
        ordered = sorted(self.rows, key=lambda r: (-r.accuracy, r.index))[:top]
        lines = [f"{'n_blocks':>8} {'avgpool':>7} {'lr':>9} {'accuracy':>9} {'loss':>8}"]
        for row in ordered:
            lines.append(
                f"{row.spec.n_blocks:>8} {row.spec.avgpool!s:>7} {row.spec.lr:>9.5g} "
                f"{100 * row.accuracy:>8.2f}% {row.loss:>8.4f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class _HeadGroup(nn.Module):
    """L heads that read the same input: weight (L, K, Din), bias (L, K)."""

    def __init__(
        self, n_blocks: int, avgpool: bool, lrs: Sequence[float], in_dim: int, num_classes: int
    ) -> None:
        super().__init__()
        self.n_blocks = n_blocks
        self.avgpool = avgpool
        self.learning_rates = tuple(float(lr) for lr in lrs)
        self.weight = nn.Parameter(torch.empty(len(lrs), num_classes, in_dim))
        self.bias = nn.Parameter(torch.empty(len(lrs), num_classes))
        # The official initialisation of each LinearClassifier: weight ~ N(0, 0.01), bias 0.
        nn.init.normal_(self.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        heads, classes, width = self.weight.shape
        return (
            f"n_blocks={self.n_blocks}, avgpool={self.avgpool}, heads={heads}, "
            f"in={width}, classes={classes}"
        )


class LinearProbeGrid(nn.Module):
    """Many official linear heads trained together from one batch of features.

    The official linear evaluation trains one ``LinearClassifier`` per learning rate x
    {1, 4} last blocks x avgpool on/off (52 heads by default) and keeps the best on the
    validation set. Here those heads are batched: heads that read the same input are one
    parameter (L, K, Din), so a step is one matrix product per input width instead of 52
    modules, and :class:`~dinov2_heads.training.GridSGD` updates them all at once, each with
    its own learning rate (scaled ``lr * batch_size / 256`` as the official code does).

    ``forward`` gives logits (B, G, K) for the G heads, :meth:`loss` the sum of their
    cross-entropies (each head's gradient is its own loss's), and :meth:`best` the winner as a
    plain :class:`~dinov2_heads.heads.LinearHead`. Training and validation over a data set are
    :func:`~dinov2_heads.training.fit_grid` and :func:`~dinov2_heads.training.evaluate_grid`;
    the latter keeps its table in :attr:`last_results`.

    Args:
        embed_dim: D of the backbone.
        num_classes: K.
        learning_rates: Base learning rates (before the batch-size scaling).
        n_blocks: The "last n blocks" options (features must hold ``max(n_blocks)`` blocks).
        avgpool: The avgpool options.
        class_names: Optional K class names, passed on to the heads taken out of the grid.
    """

    #: The ``Features`` fields it reads: a feature store read for it
    #: (``FeatureDataset(store, heads=grid)``, or inside ``fit_grid`` and ``evaluate_grid``)
    #: reads no patch tokens or chosen blocks.
    feature_parts: ClassVar[tuple[str, ...]] = ("class_tokens", "patch_mean")

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        learning_rates: Iterable[float] = OFFICIAL_LEARNING_RATES,
        n_blocks: Iterable[int] = (1, 4),
        avgpool: Iterable[bool] = (False, True),
        class_names: Iterable[str] | None = None,
    ) -> None:
        lrs = [float(lr) for lr in learning_rates]
        blocks, pools = list(n_blocks), [bool(a) for a in avgpool]
        # The official order: blocks, then avgpool, then learning rate.
        specs = [HeadSpec(n, a, lr) for n in blocks for a in pools for lr in lrs]
        self._setup(embed_dim, num_classes, specs, class_names)

    @classmethod
    def from_specs(
        cls,
        embed_dim: int,
        num_classes: int,
        specs: Iterable[HeadSpec],
        *,
        class_names: Iterable[str] | None = None,
    ) -> LinearProbeGrid:
        """A grid of exactly these heads (grouped by input; the order within groups kept)."""
        grid = cls.__new__(cls)
        grid._setup(embed_dim, num_classes, list(specs), class_names)
        return grid

    def _setup(
        self,
        embed_dim: int,
        num_classes: int,
        specs: list[HeadSpec],
        class_names: Iterable[str] | None,
    ) -> None:
        nn.Module.__init__(self)
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LinearProbeGrid: {name} must be a positive int, got {value!r}")
        if not specs:
            raise ValueError(
                "LinearProbeGrid needs at least one head: give learning rates, n_blocks and "
                "avgpool options"
            )
        for spec in specs:
            if isinstance(spec.n_blocks, bool) or not isinstance(spec.n_blocks, int):
                raise TypeError(f"n_blocks options must be ints, got {spec.n_blocks!r}")
            if spec.n_blocks < 1:
                raise ValueError(f"n_blocks options must be >= 1, got {spec.n_blocks}")
            # 0 is allowed: official names round small scaled rates to lr_0_00000.
            if not (math.isfinite(spec.lr) and spec.lr >= 0):
                raise ValueError(f"learning rates must be finite and >= 0, got {spec.lr}")
        names: dict[str, HeadSpec] = {}
        for spec in specs:
            if spec.name in names:
                raise ValueError(
                    f"two heads share the official name {spec.name} ({names[spec.name]} and "
                    f"{spec}): learning rates must differ at 5 decimals, as the official names "
                    "write them"
                )
            names[spec.name] = spec
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.class_names = check_class_names(class_names, num_classes, "LinearProbeGrid")
        keys: list[tuple[int, bool]] = []
        for spec in specs:
            if (spec.n_blocks, spec.avgpool) not in keys:
                keys.append((spec.n_blocks, spec.avgpool))
        self.groups = nn.ModuleList(
            _HeadGroup(
                n,
                a,
                [s.lr for s in specs if (s.n_blocks, s.avgpool) == (n, a)],
                HeadSpec(n, a, 1.0).input_dim(embed_dim),
                num_classes,
            )
            for n, a in keys
        )
        self.specs: tuple[HeadSpec, ...] = tuple(
            HeadSpec(group.n_blocks, group.avgpool, lr)
            for group in self.head_groups
            for lr in group.learning_rates
        )
        self.max_blocks = max(s.n_blocks for s in self.specs)
        self.last_results: GridResults | None = None

    # ------------------------------------------------------------------ description

    @property
    def head_groups(self) -> list[_HeadGroup]:
        """The parameter groups: heads that read the same input, in grid order."""
        return [cast(_HeadGroup, group) for group in self.groups]

    def __len__(self) -> int:
        """G, the number of heads."""
        return len(self.specs)

    @property
    def names(self) -> list[str]:
        """Official names of the heads, in grid order."""
        return [spec.name for spec in self.specs]

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, heads={len(self)}, "
            f"max_blocks={self.max_blocks}"
        )

    # ------------------------------------------------------------------ computation

    def forward(self, features: Features) -> Tensor:
        """Logits (B, G, K) of every head, in grid order.

        Args:
            features: At least ``max(n_blocks)`` blocks of width D (live or from the cache).
        """
        if not isinstance(features, Features):
            raise TypeError(
                f"LinearProbeGrid takes Features, got {type(features).__name__}; pass "
                "frozen(images) or a batch from a FeatureDataset"
            )
        if features.embed_dim != self.embed_dim:
            raise ValueError(
                f"LinearProbeGrid was built for D = {self.embed_dim} but the features have "
                f"D = {features.embed_dim}; build it with embed_dim={features.embed_dim}"
            )
        if features.n_blocks < self.max_blocks:
            raise ValueError(
                f"the grid has heads on the last {self.max_blocks} blocks but the features hold "
                f"{features.n_blocks}; extract with FrozenBackbone(..., n_last_blocks="
                f"{self.max_blocks}) or build the grid with n_blocks=(1,)"
            )
        dtype = self.head_groups[0].weight.dtype
        width = self.embed_dim
        # [class tokens of the last max_blocks blocks, oldest first | mean patch token]: every
        # head's official input is a contiguous slice of it.
        full = torch.cat(
            [*features.class_tokens[features.n_blocks - self.max_blocks :], features.patch_mean],
            dim=-1,
        ).to(dtype)
        outputs = []
        for group in self.head_groups:
            start = (self.max_blocks - group.n_blocks) * width
            inputs = full[:, start : start + group.weight.shape[-1]]
            weight = rearrange(group.weight, "l k d -> (l k) d")
            bias = rearrange(group.bias, "l k -> (l k)")
            outputs.append(torch.addmm(bias, inputs, weight.t()))  # (B, L * K)
        logits = torch.cat(outputs, dim=1)
        return rearrange(logits, "b (g k) -> b g k", k=self.num_classes)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Sum over heads of each head's mean cross-entropy (as the official code sums them).

        Args:
            logits: (B, G, K) from :meth:`forward`.
            labels: (B,) class indices; -100 marks a sample without a label.
        """
        heads = logits.shape[1]
        labels = check_class_labels(labels, self.num_classes, batch=logits.shape[0])
        labels = labels.to(logits.device)
        per_sample = F.cross_entropy(
            rearrange(logits, "b g k -> b k g"),
            labels[:, None].expand(-1, heads),
            reduction="none",
        )  # (B, G)
        valid = (labels >= 0).to(logits.device)
        count = valid.sum().clamp(min=1)
        return (per_sample * valid[:, None]).sum() / count

    def make_optimizer(
        self,
        batch_size: int,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> GridSGD:
        """The official optimizer: SGD with momentum, each head at ``lr * batch_size / 256``.

        Args:
            batch_size: The global batch size (per process x number of processes).
            momentum: Momentum (0.9 officially).
            weight_decay: Weight decay (0 officially).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        groups = [
            {
                "params": [group.weight, group.bias],
                "head_lr": torch.tensor(group.learning_rates, dtype=torch.float64)
                * (batch_size / 256),
            }
            for group in self.head_groups
        ]
        return GridSGD(groups, momentum=momentum, weight_decay=weight_decay)

    # ------------------------------------------------------------------ single heads

    def index(self, head: int | str | HeadSpec) -> int:
        """The grid position of a head given by position, official name or spec."""
        if isinstance(head, bool):
            raise TypeError("a head is chosen by int position, official name or HeadSpec")
        if isinstance(head, int):
            if not -len(self) <= head < len(self):
                raise IndexError(f"head {head} is out of range for a grid of {len(self)} heads")
            return head % len(self)
        if isinstance(head, HeadSpec):
            head = head.name
        if isinstance(head, str):
            names = self.names
            if head in names:
                return names.index(head)
            raise KeyError(f"no head named {head!r} in this grid; names look like {names[0]!r}")
        raise TypeError(
            "a head is chosen by int position, official name or HeadSpec, got "
            f"{type(head).__name__}"
        )

    def head_weights(self, head: int | str | HeadSpec) -> tuple[Tensor, Tensor]:
        """Weight (K, Din) and bias (K,) of one head (detached copies)."""
        position = self.index(head)
        for group in self.head_groups:
            count = len(group.learning_rates)
            if position < count:
                return group.weight[position].detach().clone(), group.bias[
                    position
                ].detach().clone()
            position -= count
        raise AssertionError("unreachable: index() checked the range")

    def head(self, head: int | str | HeadSpec) -> LinearHead:
        """One head as a plain :class:`~dinov2_heads.heads.LinearHead` (with the class names).

        Its state dict is ``{"weight", "bias"}``, the official head format.
        """
        spec = self.specs[self.index(head)]
        weight, bias = self.head_weights(head)
        linear = LinearHead(
            self.embed_dim,
            self.num_classes,
            n_blocks=spec.n_blocks,
            avgpool=spec.avgpool,
            class_names=self.class_names,
        ).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear

    def best(self, results: GridResults | None = None) -> LinearHead:
        """The head with the best validation accuracy, as a plain ``LinearHead``.

        Args:
            results: Results from :func:`~dinov2_heads.training.evaluate_grid`; by default the
                last ones on this grid.
        """
        results = results or self.last_results
        if results is None:
            raise ValueError(
                "no validation results yet: call evaluate_grid(grid, val_data) first, or pass "
                "the results to best()"
            )
        best = results.best
        logger.info("best head: %s (accuracy %.2f%%)", best.spec.name, 100 * best.accuracy)
        return self.head(best.index)

    # ------------------------------------------------------------------ official checkpoints

    def official_state_dict(self, batch_size: int = 256) -> dict[str, Tensor]:
        """The heads as the official evaluation saves them (its ``"model"`` entry).

        Keys ``classifiers_dict.classifier_{n}_blocks_avgpool_{b}_lr_{x}.linear.weight|bias``,
        with the lr written after scaling by ``batch_size / 256``.
        """
        state: dict[str, Tensor] = {}
        for position, spec in enumerate(self.specs):
            weight, bias = self.head_weights(position)
            prefix = f"classifiers_dict.{spec.official_name(batch_size)}.linear."
            state[prefix + "weight"] = weight
            state[prefix + "bias"] = bias
        return state

    @classmethod
    def from_official(
        cls,
        checkpoint: Mapping[str, Any] | str | os.PathLike[str],
        *,
        class_names: Iterable[str] | None = None,
    ) -> LinearProbeGrid:
        """The heads of an official linear-evaluation checkpoint, as a grid.

        Reads the keys ``classifiers_dict.classifier_{n}_blocks_avgpool_{b}_lr_{x}.linear.*``
        (with or without ``module.``), from a state dict, the checkpointer's
        ``{"model": ...}`` container, or a file. The heads' learning rates are those in the
        names, i.e. already scaled by the official run's ``batch_size / 256``, so
        ``grid.names`` equals the checkpoint's names. Pull one head out with
        ``grid.head("classifier_1_blocks_avgpool_True_lr_0_00100")``.
        """
        state = _official_state(checkpoint)
        heads: dict[tuple[int, bool, str], dict[str, Tensor]] = {}
        for key, value in state.items():
            match = _OFFICIAL_KEY.match(key)
            if match is None or not isinstance(value, Tensor):
                continue
            spec_key = (
                int(match["n"]),
                match["avgpool"] == "True",
                f"{match['int']}.{match['frac']}",
            )
            heads.setdefault(spec_key, {})[match["kind"]] = value
        if not heads:
            sample = ", ".join(list(state)[:3])
            raise ValueError(
                "no official linear heads found: expected keys like "
                "'classifiers_dict.classifier_1_blocks_avgpool_True_lr_0_00100.linear.weight', "
                f"got {sample or 'an empty mapping'}"
            )
        incomplete = [k for k, v in heads.items() if set(v) != {"weight", "bias"}]
        if incomplete:
            raise ValueError(f"official heads without both weight and bias: {incomplete[:3]}")
        (n0, a0, _), first = next(iter(heads.items()))
        num_classes, width = first["weight"].shape
        embed_dim = width // (n0 + int(a0))
        specs = []
        for (n, avgpool, lr_text), tensors in heads.items():
            expected = ((n + int(avgpool)) * embed_dim,)
            if tensors["weight"].shape != (num_classes, *expected):
                raise ValueError(
                    f"official head {n} blocks / avgpool {avgpool} / lr {lr_text} has weight "
                    f"{tuple(tensors['weight'].shape)}, expected {(num_classes, *expected)} "
                    f"(D = {embed_dim}, K = {num_classes})"
                )
            specs.append(HeadSpec(n, avgpool, float(lr_text)))
        grid = cls.from_specs(embed_dim, num_classes, specs, class_names=class_names)
        by_name = {
            HeadSpec(n, a, float(lr_text)).name: tensors
            for (n, a, lr_text), tensors in heads.items()
        }
        with torch.no_grad():
            position = 0
            for group in grid.head_groups:
                for local, spec in enumerate(
                    grid.specs[position : position + len(group.learning_rates)]
                ):
                    group.weight[local].copy_(by_name[spec.name]["weight"])
                    group.bias[local].copy_(by_name[spec.name]["bias"])
                position += len(group.learning_rates)
        logger.info(
            "loaded %d official linear heads (D = %d, K = %d)", len(grid), embed_dim, num_classes
        )
        return grid


def _official_state(checkpoint: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(checkpoint, str | os.PathLike):
        checkpoint = read_checkpoint_file(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            "expected an official linear-evaluation checkpoint: a path or a mapping, got "
            f"{type(checkpoint).__name__}"
        )
    model = checkpoint.get("model")
    if isinstance(model, Mapping):
        return model
    return checkpoint
