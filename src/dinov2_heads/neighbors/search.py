"""``NearestNeighbors``: the most similar stored images of each query, exact by default.

Stored rows and queries are L2-normalised, so the similarity is the cosine. The exact search
(the default and the reference) visits the stored rows in chunks with the same top-k as the
k-NN classifier, ties broken by the lower row, so no (queries x store) similarity matrix exists
and a store larger than memory can be searched. A faiss index is an option for very large stores.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.cache import FeatureStore, StoreMismatchError
from dinov2_heads.features import Features
from dinov2_heads.neighbors.image_paths import store_image_paths
from dinov2_heads.neighbors.pooling import (
    Source,
    as_matrix,
    check_matrix,
    check_pooling,
    iter_rows,
    pool,
    source_length,
)
from dinov2_heads.neighbors.topk import TopK, chunked_topk

logger = logging.getLogger(__name__)

__all__ = ["INDEX_FORMAT", "NearestNeighbors", "Neighbor", "SearchResult", "source_fingerprint"]

#: The ``format`` entry of a saved index.
INDEX_FORMAT = "dinov2-heads/nearest-neighbors"
INDEX_VERSION = 1
Backend = Literal["torch", "faiss"]
BACKENDS: tuple[str, ...] = ("torch", "faiss")
#: Stored rows hashed (evenly spaced) into a source's fingerprint, besides its ids.
_PROBE_ROWS = 16
#: Queries scored against one chunk at once: bounds the (queries x chunk) similarity matrix.
_QUERY_BLOCK = 1024


@dataclass(frozen=True)
class Neighbor:
    """One stored sample found for a query.

    Attributes:
        rank: 1 for the most similar.
        similarity: Cosine similarity in [-1, 1].
        index: The row in the searched features (the store's position).
        sample_id: The store's id of that row (its position in the data it was extracted
            from, unless the data gave ids); equal to ``index`` for a tensor.
        path: The image file, when known.
    """

    rank: int
    similarity: float
    index: int
    sample_id: int
    path: str | None


@dataclass(frozen=True)
class SearchResult:
    """The k nearest stored samples of B queries, most similar first.

    Attributes:
        similarities: (B, k) float32 cosine similarities, descending along each row.
        indices: (B, k) int64 rows of the searched features.
        sample_ids: (B, k) int64 ids of those rows (``store.sample_ids``).
        paths: B lists of k image paths (``None`` where unknown), or ``None`` when no path is
            known at all.
    """

    similarities: Tensor
    indices: Tensor
    sample_ids: Tensor
    paths: list[list[str | None]] | None

    def __len__(self) -> int:
        """B, the number of queries."""
        return int(self.similarities.shape[0])

    def neighbors(self, query: int) -> list[Neighbor]:
        """The k neighbours of query number ``query``, most similar first."""
        if not -len(self) <= query < len(self):
            raise IndexError(f"query {query} is out of range for {len(self)} queries")
        paths = self.paths[query] if self.paths is not None else None
        return [
            Neighbor(
                rank=rank + 1,
                similarity=float(self.similarities[query, rank]),
                index=int(self.indices[query, rank]),
                sample_id=int(self.sample_ids[query, rank]),
                path=paths[rank] if paths is not None else None,
            )
            for rank in range(self.similarities.shape[1])
        ]

    def table(self, query: int) -> str:
        """The neighbours of one query as a plain-text table (rank, similarity, id, path)."""
        lines = [f"{'rank':>4}  {'similarity':>10}  {'id':>8}  path"]
        for n in self.neighbors(query):
            lines.append(f"{n.rank:>4}  {n.similarity:>10.4f}  {n.sample_id:>8}  {n.path or '-'}")
        return "\n".join(lines)


class NearestNeighbors:
    """Exact cosine nearest-neighbour search over stored features, with ids and image paths.

    Args:
        features: The searched samples: (M, D) features, :class:`Features` or a feature store
            (read chunk by chunk from its memory map).
        paths: One image path per stored row; ``None`` reads the ``dataset.json`` that
            ``dinov2-heads extract`` writes beside a store on disk, when there is one (see
            :func:`~dinov2_heads.neighbors.store_image_paths`).
        pooling: How :class:`Features` and stored rows become one vector: ``"class"``,
            ``"patch_mean"`` or ``"class+patch_mean"``.
        chunk_size: Stored rows compared with the queries at once; ``None`` takes a tensor
            whole and a store 65,536 rows at a time.
        backend: ``"torch"`` (exact; the default and the reference) or ``"faiss"`` (a faiss
            index built from the rows, for very large stores; needs ``pip install faiss-cpu``).
        faiss_index: The faiss index factory string; ``"Flat"`` (exact inner product) by
            default, ``"IVF4096,Flat"`` and the like trade exactness for speed.
        device: Where the torch backend compares; the queries' device by default.

    Example:
        >>> stored = torch.randn(100, 16)
        >>> search = NearestNeighbors(stored)
        >>> result = search.search(stored[:2], k=3)
        >>> result.indices[:, 0].tolist()
        [0, 1]
    """

    def __init__(
        self,
        features: Source,
        *,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        pooling: str = "class",
        chunk_size: int | None = None,
        backend: str = "torch",
        faiss_index: str = "Flat",
        device: torch.device | str | None = None,
    ) -> None:
        check_pooling(pooling)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.pooling = pooling
        self.backend = backend
        self.faiss_index = faiss_index
        self.device = torch.device(device) if device is not None else None
        self.count = source_length(features)
        if self.count == 0:
            raise ValueError("there is nothing to search: the features hold no samples")
        self._source: Source
        if isinstance(features, FeatureStore):
            self._source = features
            self.chunk_size = chunk_size or 65_536
            self._ids = features.sample_ids().clone()
            self.embed_dim = int(next(iter_rows(features, 1, pooling))[1].shape[1])
        else:
            rows = as_matrix(features, pooling)
            check_matrix(rows, "stored features")
            self._source = F.normalize(rows.detach().float(), dim=1)
            self.chunk_size = chunk_size or self.count
            self._ids = torch.arange(self.count)
            self.embed_dim = int(rows.shape[1])
        self.paths = self._check_paths(features, paths)
        # Taken from the features as given (not the normalised copy), as open() will see them.
        self.fingerprint = source_fingerprint(features, pooling)
        self._backbone = _backbone_fingerprint(features)
        self._faiss: Any = None
        if backend == "faiss":
            self._faiss = self._build_faiss()

    # ------------------------------------------------------------------ search

    def search(self, queries: Tensor | Features, k: int = 5) -> SearchResult:
        """The ``k`` most similar stored samples of each query.

        Args:
            queries: (B, D) features or :class:`Features` (pooled like the stored rows).
            k: Neighbours per query, at most the number of stored samples.

        Returns:
            A :class:`SearchResult` with (B, k) similarities, rows, sample ids and paths.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > self.count:
            raise ValueError(
                f"k = {k} is larger than the searched set ({self.count} samples); use k <= "
                f"{self.count}"
            )
        normalised = self._queries(queries)
        if self._faiss is not None:
            best = self._faiss_topk(normalised, k)
        else:
            parts = [
                self._torch_topk(normalised[start : start + _QUERY_BLOCK], k)
                for start in range(0, normalised.shape[0], _QUERY_BLOCK)
            ]
            best = TopK(
                torch.cat([p.values for p in parts]) if parts else normalised.new_empty(0, k),
                torch.cat([p.indices for p in parts])
                if parts
                else torch.empty(0, k, dtype=torch.long),
            )
        indices = best.indices.cpu()
        paths = None
        if self.paths is not None:
            paths = [[self.paths[i] for i in row] for row in indices.tolist()]
        return SearchResult(best.values.float().cpu(), indices, self._ids[indices], paths)

    # ------------------------------------------------------------------ saving

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index settings and the fingerprint of the searched features (JSON).

        With the faiss backend the built index is written beside it, as ``<path>.faiss``.
        Files are written atomically. Reopen with :meth:`open` and the same features.
        """
        target = Path(path)
        if target.is_dir():
            raise IsADirectoryError(
                f"{target} is a folder; pass a file name inside it, e.g. {target / 'index.json'}"
            )
        record = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "pooling": self.pooling,
            "chunk_size": self.chunk_size,
            "backend": self.backend,
            "faiss_index": self.faiss_index,
            "count": self.count,
            "embed_dim": self.embed_dim,
            "backbone_fingerprint": self._backbone,
            "fingerprint": self.fingerprint,
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._faiss is not None:
            faiss = _import_faiss()
            data = faiss.serialize_index(self._faiss).tobytes()
            atomic_write_bytes(_faiss_file(target), data)
        atomic_write_bytes(target, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        logger.debug("wrote %s (%s search over %d samples)", target, self.backend, self.count)
        return target

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        features: Source,
        *,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        device: torch.device | str | None = None,
    ) -> NearestNeighbors:
        """Reopen a saved index over the features it was built from.

        Raises:
            FileNotFoundError: There is no saved index at ``path``.
            ValueError: The file is not a saved index.
            StoreMismatchError: ``features`` are not the ones the index was built from (another
                backbone, other images, another count or pooling); the message names both.
        """
        record = _read_record(Path(path))
        pooling = str(record["pooling"])
        check_pooling(pooling)
        search = cls(
            features,
            paths=paths,
            pooling=pooling,
            chunk_size=int(record["chunk_size"]),
            faiss_index=str(record["faiss_index"]),
            device=device,
        )
        found = search.fingerprint
        if found != record["fingerprint"]:
            raise StoreMismatchError(
                f"the index at {path} was built for other features: fingerprint "
                f"{record['fingerprint'][:16]}... ({record['count']} samples, backbone "
                f"{_short(record.get('backbone_fingerprint'))}), these have {found[:16]}... "
                f"({source_length(features)} samples, backbone "
                f"{_short(_backbone_fingerprint(features))}); build a new index with "
                "NearestNeighbors(features) and save it"
            )
        if record["backend"] == "faiss":
            # The built index is read back, not rebuilt.
            faiss = _import_faiss()
            import numpy as np

            data = np.frombuffer(_faiss_file(Path(path)).read_bytes(), dtype=np.uint8)
            search._faiss = faiss.deserialize_index(data)
            search.backend = "faiss"
        return search

    def __repr__(self) -> str:
        paths = "with paths" if self.paths is not None else "no paths"
        return (
            f"NearestNeighbors({self.count} samples, D={self.embed_dim}, pooling={self.pooling!r}, "
            f"backend={self.backend!r}, {paths})"
        )

    # ------------------------------------------------------------------ internals

    def _check_paths(
        self, features: Source, paths: Sequence[str | os.PathLike[str]] | None
    ) -> list[str | None] | None:
        if paths is None:
            if not isinstance(features, FeatureStore):
                return None
            return store_image_paths(features)
        if isinstance(paths, str | os.PathLike):
            raise TypeError(
                "paths must be a sequence with one path per stored sample, not one path"
            )
        listed = [str(p) for p in paths]
        if len(listed) != self.count:
            raise ValueError(
                f"got {len(listed)} paths for {self.count} stored samples; pass one path per "
                "sample, in the store's order"
            )
        return list(listed)

    def _queries(self, queries: Tensor | Features) -> Tensor:
        vectors = pool(queries, self.pooling) if isinstance(queries, Features) else queries
        if not isinstance(vectors, Tensor):
            raise TypeError(
                f"expected queries as a (B, D) tensor or Features, got {type(queries).__name__}"
            )
        if vectors.ndim == 1:
            raise ValueError(
                f"expected queries of shape (B, D), got {tuple(vectors.shape)}; for one query "
                "use query.unsqueeze(0)"
            )
        if vectors.ndim != 2 or vectors.shape[1] != self.embed_dim:
            raise ValueError(
                f"expected queries of shape (B, {self.embed_dim}) like the stored features "
                f"(pooling {self.pooling!r}), got {tuple(vectors.shape)}; embed the queries with "
                "the backbone the features were extracted with"
            )
        if not vectors.is_floating_point():
            raise TypeError(f"queries must be floating point, got {vectors.dtype}")
        check_matrix(vectors, "queries")
        if self.device is not None:
            vectors = vectors.to(self.device)
        return F.normalize(vectors.detach().float(), dim=1)

    def _chunks(self, device: torch.device) -> Iterator[tuple[int, Tensor]]:
        source = self._source
        if isinstance(source, FeatureStore):
            for offset, rows in iter_rows(source, self.chunk_size, self.pooling):
                yield offset, F.normalize(rows.to(device).float(), dim=1)
            return
        assert isinstance(source, Tensor)
        local = source.to(device)
        for begin in range(0, local.shape[0], self.chunk_size):
            yield begin, local[begin : begin + self.chunk_size]

    def _torch_topk(self, queries: Tensor, k: int) -> TopK:
        return chunked_topk(queries, self._chunks(queries.device), k)

    def _build_faiss(self) -> Any:
        faiss = _import_faiss()
        index = faiss.index_factory(self.embed_dim, self.faiss_index, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            # Trained on the first chunk: enough for coarse quantisers of usual sizes.
            _, first = next(self._chunks(torch.device("cpu")))
            index.train(first.numpy())
        for _, rows in self._chunks(torch.device("cpu")):
            index.add(rows.contiguous().numpy())
        logger.info("built a faiss %r index of %d samples", self.faiss_index, self.count)
        return index

    def _faiss_topk(self, queries: Tensor, k: int) -> TopK:
        values, indices = self._faiss.search(queries.cpu().contiguous().numpy(), k)
        if (indices < 0).any():
            raise ValueError(
                f"the faiss {self.faiss_index!r} index found fewer than k = {k} neighbours for "
                "some queries; search more of it (a larger nprobe) or use the exact "
                'backend="torch"'
            )
        return TopK(torch.from_numpy(values).float(), torch.from_numpy(indices).long())


def source_fingerprint(source: Source, pooling: str = "class") -> str:
    """A sha256 that tells searched feature sets apart, without reading all of them.

    It covers the backbone fingerprint a store records, the sample count, the vector width,
    the pooling, every sample id, and the pooled vectors of 16 evenly spaced rows: the same
    backbone over other images, or the same images through other weights, differ.
    """
    check_pooling(pooling)
    count = source_length(source)
    digest = hashlib.sha256()
    digest.update(f"{_backbone_fingerprint(source)} {count} {pooling}\n".encode())
    ids = source.sample_ids() if isinstance(source, FeatureStore) else torch.arange(count)
    digest.update(ids.to(torch.int64).contiguous().numpy().tobytes())
    if count:
        probes = sorted({round(i * (count - 1) / max(_PROBE_ROWS - 1, 1)) for i in range(16)})
        if isinstance(source, FeatureStore):
            vectors = pool(source.features(probes, parts="pooled"), pooling)
        else:
            vectors = as_matrix(source, pooling)[probes]
        vectors = vectors.detach().float().cpu().contiguous()
        digest.update(f"{tuple(vectors.shape)}\n".encode())
        digest.update(vectors.numpy().tobytes())
    return digest.hexdigest()


def _backbone_fingerprint(source: Source) -> str | None:
    return source.fingerprint if isinstance(source, FeatureStore) else None


def _short(fingerprint: object) -> str:
    return f"{str(fingerprint)[:16]}..." if fingerprint else "not recorded"


def _faiss_file(path: Path) -> Path:
    return path.with_name(path.name + ".faiss")


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no saved index at {path}; build one with NearestNeighbors(features).save(path)"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a saved nearest-neighbour index ({error})") from None
    if not isinstance(record, dict) or record.get("format") != INDEX_FORMAT:
        raise ValueError(
            f"{path} is not a saved nearest-neighbour index (no format {INDEX_FORMAT!r})"
        )
    if int(record.get("version", 0)) > INDEX_VERSION:
        raise ValueError(
            f"{path} was written by a newer dinov2-heads (index version {record['version']}, "
            f"this one reads up to {INDEX_VERSION}); upgrade dinov2-heads"
        )
    return record


def _import_faiss() -> Any:
    try:
        # Through importlib: faiss ships no type information.
        faiss = importlib.import_module("faiss")
    except ImportError:
        raise ImportError(
            'backend="faiss" needs faiss, which is not installed: pip install faiss-cpu (or '
            'faiss-gpu); backend="torch" (the default) needs nothing more'
        ) from None
    return faiss
