"""One vector per image from stored or live features, as the evaluations without training use.

The official kNN and logistic-regression evaluations use the backbone's output, the class token
of the last block after the final norm (``"class"``). ``"patch_mean"`` is the mean patch token
of the last block, and ``"class+patch_mean"`` the two concatenated (the linear head's input with
``avgpool``).

A feature store is read for its pooled tokens alone: its patch tokens and chosen blocks, when it
keeps them, are neither read nor converted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor

from dinov2_heads.cache import FeatureStore
from dinov2_heads.features import Features

__all__ = ["POOLINGS", "Pooling", "iter_rows", "pool", "source_length"]

Pooling = Literal["class", "patch_mean", "class+patch_mean"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

#: Anything that holds one feature vector per sample.
Source = Tensor | Features | FeatureStore


def check_pooling(pooling: str) -> None:
    """A ``ValueError`` naming the choices when ``pooling`` is not one of them."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def pool(features: Features, pooling: str = "class") -> Tensor:
    """(B, D) or (B, 2D) float32 vectors of ``features`` for ``pooling``."""
    check_pooling(pooling)
    if pooling == "class":
        return features.class_token.float()
    if pooling == "patch_mean":
        return features.patch_mean.float()
    return torch.cat([features.class_token, features.patch_mean], dim=-1).float()


def as_matrix(source: Source, pooling: str = "class") -> Tensor:
    """A (M, D) float matrix from a tensor, :class:`Features` or a (small) store."""
    if isinstance(source, Tensor):
        if source.ndim != 2:
            raise ValueError(
                f"expected features of shape (M, D), got {tuple(source.shape)}; pool the tokens "
                "first (for example features.class_token)"
            )
        if not source.is_floating_point():
            raise TypeError(f"features must be floating point, got {source.dtype}")
        return source
    if isinstance(source, Features):
        return pool(source, pooling)
    if isinstance(source, FeatureStore):
        return pool(source.features(slice(None), parts="pooled"), pooling)
    raise TypeError(
        "expected features as a (M, D) tensor, Features or a FeatureStore, got "
        f"{type(source).__name__}"
    )


def source_length(source: Source) -> int:
    """M, the number of samples ``source`` holds."""
    if isinstance(source, Tensor):
        return int(source.shape[0])
    if isinstance(source, Features):
        return source.batch_size
    if isinstance(source, FeatureStore):
        return len(source)
    raise TypeError(
        "expected features as a (M, D) tensor, Features or a FeatureStore, got "
        f"{type(source).__name__}"
    )


def iter_rows(
    source: Source,
    chunk_size: int,
    pooling: str = "class",
    *,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """``(offset, rows (C, D))`` over rows ``start .. stop`` of ``source``, in chunks.

    A store is read chunk by chunk from its memory map, so a store larger than memory can be
    searched.
    """
    end = source_length(source) if stop is None else stop
    for offset in range(start, end, chunk_size):
        upper = min(offset + chunk_size, end)
        if isinstance(source, FeatureStore):
            rows = pool(source.features(slice(offset, upper), parts="pooled"), pooling)
        elif isinstance(source, Features):
            rows = pool(source[offset:upper], pooling)
        else:
            rows = as_matrix(source)[offset:upper]
        yield offset, rows
