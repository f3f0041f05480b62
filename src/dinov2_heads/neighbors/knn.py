"""``KnnClassifier``: the official DINOv2 k-NN evaluation, memory-bounded and exact."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import distributed
from dinov2_heads.cache import FeatureStore
from dinov2_heads.features import Features
from dinov2_heads.neighbors.labels import source_labels
from dinov2_heads.neighbors.pooling import (
    Source,
    as_matrix,
    check_matrix,
    check_pooling,
    iter_rows,
    pool,
    source_length,
)
from dinov2_heads.neighbors.topk import TopK, chunked_topk, merge_topk

logger = logging.getLogger(__name__)

__all__ = ["KnnClassifier", "KnnEvaluation"]

#: The official evaluation's k values and temperature (``dinov2/eval/knn.py``).
OFFICIAL_K = (10, 20, 100, 200)
OFFICIAL_TEMPERATURE = 0.07


@dataclass(frozen=True)
class KnnEvaluation:
    """Top-1 and top-5 accuracy (in %) of a :class:`KnnClassifier` for each k.

    Attributes:
        top1: ``{k: accuracy}``.
        top5: ``{k: accuracy}`` (top-min(5, C) when there are fewer than 5 classes).
        count: Number of evaluated samples.
    """

    top1: dict[int, float]
    top5: dict[int, float]
    count: int

    def best_k(self) -> int:
        """The k with the highest top-1 accuracy (the smaller k on a tie)."""
        return max(self.top1, key=lambda k: (self.top1[k], -k))

    def table(self) -> str:
        """A plain-text table, one row per k."""
        lines = [f"{'k':>5}  {'top-1 %':>8}  {'top-5 %':>8}"]
        lines += [f"{k:>5}  {self.top1[k]:>8.2f}  {self.top5[k]:>8.2f}" for k in self.top1]
        return "\n".join(lines)


class KnnClassifier:
    """k-nearest-neighbour classification on frozen features, as the official evaluation runs it.

    Training and query features are L2-normalised (the official ``ModelWithNormalize``), the
    ``max(k)`` most cosine-similar training samples of each query are found, their weights are
    ``softmax(similarity / temperature)`` over those ``max(k)`` neighbours, and the score of a
    class for each k is the summed weight of the first k neighbours with that label. Ties in
    similarity are broken by the lower training index, so results never depend on ``chunk_size``
    or on the number of processes.

    The training set is visited ``chunk_size`` rows at a time (a partial top-k per chunk, then a
    merged top-k), so no (queries x training set) similarity matrix is ever formed whole; a
    :class:`~dinov2_heads.cache.FeatureStore` is read chunk by chunk from disk. Under torchrun each
    process holds its ``torch.chunk`` share of the training set, as the official module does,
    and every process must call :meth:`predict_proba` the same number of times.

    Args:
        train_features: (M, D) features, :class:`Features`, or a feature store.
        train_labels: (M,) int64 class indices; from a store, ``None`` reads its labels (its
            ``label`` column for stores with several).
        num_classes: C; ``max(train_labels) + 1`` by default, as the official code.
        k: The neighbour counts to score, each at most M.
        temperature: T of the softmax weights.
        chunk_size: Training rows per chunk; ``None`` takes the whole (local) training set at
            once for tensors and 65,536 rows for stores.
        pooling: How stored or live :class:`Features` become one vector: ``"class"`` (the
            official choice), ``"patch_mean"`` or ``"class+patch_mean"``.
        label: The label column to use from a store with several.
        device: Where the similarities are computed; the query's device by default.

    Example:
        >>> train = torch.randn(500, 16)
        >>> labels = torch.randint(0, 4, (500,))
        >>> knn = KnnClassifier(train, labels, k=(1, 5))
        >>> sorted(knn.predict_proba(torch.randn(3, 16)))
        [1, 5]
    """

    def __init__(
        self,
        train_features: Source,
        train_labels: Tensor | None = None,
        *,
        num_classes: int | None = None,
        k: int | Sequence[int] = OFFICIAL_K,
        temperature: float = OFFICIAL_TEMPERATURE,
        chunk_size: int | None = None,
        pooling: str = "class",
        label: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_pooling(pooling)
        self.pooling = pooling
        self.k = _check_k(k)
        self.max_k = max(self.k)
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.device = torch.device(device) if device is not None else None

        count = source_length(train_features)
        labels, self.num_classes = source_labels(
            train_features, train_labels, count, column=label, num_classes=num_classes
        )
        if self.max_k > count:
            raise ValueError(
                f"k = {self.max_k} is larger than the training set ({count} samples); "
                f"use k values of at most {count}"
            )
        self.count = count

        # This process's share of the training set, as torch.chunk splits it.
        share = math.ceil(count / distributed.world_size())
        self._start = min(distributed.rank() * share, count)
        self._stop = min(self._start + share, count)
        self._labels = labels  # every process keeps all M labels: small next to the features
        self._source: Source
        if isinstance(train_features, FeatureStore):
            self._source = train_features
            self.chunk_size = chunk_size or 65_536
            #: D of the training features, which queries must have.
            self.embed_dim = int(next(iter_rows(train_features, 1, pooling))[1].shape[1])
        else:
            matrix = as_matrix(train_features, pooling)
            check_matrix(matrix, "training features")
            self.embed_dim = int(matrix.shape[1])
            rows = matrix[self._start : self._stop]
            self._source = F.normalize(rows.float(), dim=1)
            self.chunk_size = chunk_size or max(1, self._stop - self._start)

    # ------------------------------------------------------------------ prediction

    def neighbors(self, features: Tensor | Features) -> TopK:
        """The ``max(k)`` nearest training samples of each query: similarities and indices."""
        queries = self._queries(features)
        if not distributed.is_distributed():
            return self._local_topk(queries)
        return self._distributed_topk(queries)

    def predict_proba(self, features: Tensor | Features) -> dict[int, Tensor]:
        """Class scores ``{k: (B, C)}`` for queries (B, D) or :class:`Features`.

        The scores for each k sum to the softmax weight of the first k neighbours (1 for
        ``max(k)``), as in the official evaluation.
        """
        best = self.neighbors(features)
        labels = self._labels_of(best.indices)
        weights = torch.softmax(best.values / self.temperature, dim=1)
        # Each neighbour's weight is added to its class, nearest first, and the running scores
        # are copied out at every k: (B, C) per k, never a (B, max_k, C) one-hot tensor.
        scores = weights.new_zeros(weights.shape[0], self.num_classes)
        out, done = {}, 0
        for k in sorted(self.k):
            scores.scatter_add_(1, labels[:, done:k], weights[:, done:k])
            out[k], done = scores.clone(), k
        return {k: out[k] for k in self.k}

    def predict(self, features: Tensor | Features, *, k: int | None = None) -> Tensor:
        """(B,) predicted class indices with ``k`` neighbours (20 if scored, else the first k)."""
        chosen = k if k is not None else (20 if 20 in self.k else self.k[0])
        if chosen not in self.k:
            raise ValueError(f"k = {chosen} was not scored; this classifier scores k in {self.k}")
        return self.predict_proba(features)[chosen].argmax(dim=1)

    def evaluate(
        self, features: Source, labels: Tensor | None = None, *, batch_size: int = 1024
    ) -> KnnEvaluation:
        """Top-1 / top-5 accuracy for every k on labelled queries (logged as a table).

        Args:
            features: Query features: (Q, D), :class:`Features` or a feature store.
            labels: (Q,) true classes; ``None`` reads them from a store.
            batch_size: Queries scored at once.
        """
        count = source_length(features)
        truth, _ = source_labels(features, labels, count)
        top = min(5, self.num_classes)
        hits1 = {k: 0 for k in self.k}
        hits5 = {k: 0 for k in self.k}
        for offset, queries in iter_rows(features, batch_size, self.pooling):
            target = truth[offset : offset + queries.shape[0]].to(queries.device)
            for k, scores in self.predict_proba(queries).items():
                ranked = scores.topk(top, dim=1).indices
                hits1[k] += int((ranked[:, 0] == target).sum())
                hits5[k] += int((ranked == target[:, None]).any(dim=1).sum())
        result = KnnEvaluation(
            top1={k: 100.0 * hits1[k] / max(count, 1) for k in self.k},
            top5={k: 100.0 * hits5[k] / max(count, 1) for k in self.k},
            count=count,
        )
        logger.info("k-NN on %d samples:\n%s", count, result.table())
        return result

    # ------------------------------------------------------------------ internals

    def _queries(self, features: Tensor | Features) -> Tensor:
        queries = pool(features, self.pooling) if isinstance(features, Features) else features
        if not isinstance(queries, Tensor):
            raise TypeError(
                f"expected query features as a (B, D) tensor or Features, got "
                f"{type(queries).__name__}"
            )
        check_matrix(queries, "query features", self.embed_dim, rows="B")
        if self.device is not None:
            queries = queries.to(self.device)
        return F.normalize(queries.float(), dim=1)

    def _chunks(self, device: torch.device) -> Iterator[tuple[int, Tensor]]:
        source = self._source
        if isinstance(source, FeatureStore):
            for offset, rows in iter_rows(
                source, self.chunk_size, self.pooling, start=self._start, stop=self._stop
            ):
                yield offset, F.normalize(rows.to(device).float(), dim=1)
            return
        assert isinstance(source, Tensor)
        local = source.to(device)
        for begin in range(0, local.shape[0], self.chunk_size):
            yield self._start + begin, local[begin : begin + self.chunk_size]

    def _local_topk(self, queries: Tensor) -> TopK:
        local_k = min(self.max_k, self._stop - self._start)
        if local_k == 0:
            empty = queries.new_empty((queries.shape[0], 0))
            return TopK(empty, empty.long())
        return chunked_topk(queries, self._chunks(queries.device), local_k)

    def _distributed_topk(self, queries: Tensor) -> TopK:
        # Each process's queries in turn visit every process's share of the training set; the
        # owner merges the partial results, as the official KnnModule does.
        mine: TopK | None = None
        for source in range(distributed.world_size()):
            shape = torch.tensor(queries.shape, device=queries.device)
            dist.broadcast(shape, source)
            sent = queries if distributed.rank() == source else queries.new_empty(shape.tolist())
            dist.broadcast(sent, source)
            part = _pad(self._local_topk(sent), self.max_k, self.count)
            values = [torch.empty_like(part.values) for _ in range(distributed.world_size())]
            indices = [torch.empty_like(part.indices) for _ in range(distributed.world_size())]
            dist.all_gather(values, part.values)
            dist.all_gather(indices, part.indices)
            if distributed.rank() == source:
                parts = [TopK(v, i) for v, i in zip(values, indices, strict=True)]
                mine = merge_topk(parts, self.max_k)
        assert mine is not None
        return mine

    def _labels_of(self, indices: Tensor) -> Tensor:
        return self._labels.to(indices.device)[indices]


def _pad(part: TopK, k: int, count: int) -> TopK:
    missing = k - part.values.shape[1]
    if missing <= 0:
        return part
    # Padding sorts after every real neighbour: -inf similarity and an index past the end.
    values = F.pad(part.values, (0, missing), value=-math.inf)
    indices = F.pad(part.indices, (0, missing), value=count)
    return TopK(values, indices)


def _check_k(k: int | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(k, int | Sequence):
        raise ValueError(f"k must be a positive int or a sequence of them, got {k!r}")
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ks):
        raise ValueError(f"k must be a positive int or a sequence of them, got {k!r}")
    return tuple(sorted(set(ks)))
