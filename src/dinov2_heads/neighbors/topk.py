"""Exact cosine top-k over a large set of rows, visited in chunks.

The similarity matrix of Q queries against M stored rows is never formed whole: each chunk of
rows gives its own top-k, which is merged into a running top-k. The order is total, so the result
does not depend on the chunk size, the number of processes or ``torch.topk``'s tie handling:
higher similarity first, and among equal similarities the row with the lower index first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TopK", "chunked_topk", "merge_topk"]


@dataclass(frozen=True)
class TopK:
    """The k best rows for each of Q queries, best first.

    Attributes:
        values: (Q, k) similarities, descending.
        indices: (Q, k) int64 row indices into the searched rows; ties by ascending index.
    """

    values: Tensor
    indices: Tensor


def _order(values: Tensor, indices: Tensor, k: int) -> TopK:
    # Sort by index first, then stably by value: equal values keep ascending indices.
    by_index = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return TopK(values.gather(1, by_value), indices.gather(1, by_value))


def _chunk_topk(similarity: Tensor, offset: int, k: int) -> TopK:
    """The exact top-k of one (Q, C) similarity chunk, ties broken by the lower column."""
    columns = similarity.shape[1]
    if k >= columns:
        indices = torch.arange(columns, device=similarity.device).expand_as(similarity)
        return _order(similarity, indices + offset, k)
    # One more than needed tells whether the k-th value is tied with a value left out; only
    # then does the choice among equals matter, and only those rows pay for a full sort.
    values, indices = similarity.topk(k + 1, dim=1, largest=True, sorted=True)
    tied = values[:, k - 1] == values[:, k]
    best = _order(values[:, :k], indices[:, :k], k)
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        exact = similarity[rows].argsort(dim=1, descending=True, stable=True)[:, :k]
        best.values[rows] = similarity[rows].gather(1, exact)
        best.indices[rows] = exact
    return TopK(best.values, best.indices + offset)


def merge_topk(parts: list[TopK], k: int) -> TopK:
    """The best k of several partial top-k results over disjoint rows of the same queries."""
    if len(parts) == 1:
        return parts[0]
    values = torch.cat([part.values for part in parts], dim=1)
    indices = torch.cat([part.indices for part in parts], dim=1)
    return _order(values, indices, k)


def chunked_topk(
    queries: Tensor,
    chunks: Iterator[tuple[int, Tensor]],
    k: int,
    *,
    similarity: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> TopK:
    """The top-k rows for each query over rows handed out in chunks.

    Args:
        queries: (Q, D) queries, already normalised when cosine similarity is wanted.
        chunks: ``(offset, rows)`` pairs, rows (C, D) being rows ``offset .. offset + C`` of the
            searched set, in any order; their union must have at least ``k`` rows.
        k: How many rows to keep per query.
        similarity: ``(queries (Q, D), rows (C, D)) -> (Q, C)``; the dot product by default.

    Returns:
        The :class:`TopK` of the union of all chunks.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(queries, Tensor) or queries.ndim != 2:
        shape = tuple(queries.shape) if isinstance(queries, Tensor) else type(queries).__name__
        raise ValueError(f"expected queries of shape (Q, D), got {shape}")
    score = similarity or (lambda q, rows: q @ rows.T)
    best: TopK | None = None
    for offset, rows in chunks:
        if rows.shape[0] == 0:
            continue
        if similarity is None and (rows.ndim != 2 or rows.shape[1] != queries.shape[1]):
            raise ValueError(
                f"expected rows of shape (C, {queries.shape[1]}) like the queries, got "
                f"{tuple(rows.shape)} at offset {offset}"
            )
        if similarity is None and rows.dtype != queries.dtype:
            raise TypeError(
                f"the rows are {rows.dtype} but the queries {queries.dtype}; convert one to "
                "the other's dtype"
            )
        part = _chunk_topk(score(queries, rows), offset, k)
        best = part if best is None else merge_topk([best, part], k)
    if best is None or best.values.shape[1] < k:
        found = 0 if best is None else best.values.shape[1]
        raise ValueError(f"asked for the {k} nearest rows but only {found} rows were given")
    return best
