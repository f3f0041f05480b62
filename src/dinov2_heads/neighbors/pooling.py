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

__all__ = ["POOLINGS", "Pooling", "check_matrix", "iter_rows", "pool", "source_length"]

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


def check_matrix(
    features: Tensor, what: str = "features", width: int | None = None, *, rows: str = "M"
) -> None:
    """The one check of a (M, D) feature matrix: 2-D, floating point, ``width`` wide, finite.

    Args:
        features: The matrix.
        what: Its name in messages (``"features"``, ``"query features"``).
        width: D it must have (the stored features'), or ``None``.
        rows: The letter of the first dimension in messages (``"B"`` for queries).

    Raises:
        ValueError: Another shape, or NaN / inf values (the rows are named): a NaN ranks as
            no neighbour and no class would, and the answer would be wrong without a sign.
        TypeError: Integer or boolean values.
    """
    if features.ndim != 2:
        one = "; for one sample use x.unsqueeze(0)" if features.ndim == 1 else ""
        raise ValueError(
            f"expected {what} of shape ({rows}, D), got {tuple(features.shape)}; pool the tokens "
            f"first (for example features.class_token){one}"
        )
    if not features.is_floating_point():
        raise TypeError(
            f"{what} must be floating point, got {features.dtype}; pass the backbone's float "
            "features"
        )
    if width is not None and features.shape[1] != width:
        raise ValueError(
            f"expected {what} of shape ({rows}, {width}) like the training features, got "
            f"{tuple(features.shape)}; use features of the same backbone and pooling"
        )
    if features.device.type != "meta" and not bool(torch.isfinite(features).all()):
        bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()
        listed = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if bad.numel() > 5 else "")
        raise ValueError(
            f"{what} hold NaN or inf in {bad.numel()} of {features.shape[0]} rows ({listed}); "
            "drop those samples, or find where they come from (a NaN in the images or "
            "weights, an overflow in float16)"
        )


def as_matrix(source: Source, pooling: str = "class") -> Tensor:
    """A (M, D) float matrix from a tensor, :class:`Features` or a (small) store."""
    if isinstance(source, Tensor):
        check_matrix(source)
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
        if source.ndim != 2:
            check_matrix(source)  # names the shape, before M is taken from it
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
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"the batch or chunk size must be a positive int, got {chunk_size!r}")
    if isinstance(source, Tensor):
        check_matrix(source)  # once, not per chunk
    for offset in range(start, end, chunk_size):
        upper = min(offset + chunk_size, end)
        if isinstance(source, FeatureStore):
            rows = pool(source.features(slice(offset, upper), parts="pooled"), pooling)
        elif isinstance(source, Features):
            rows = pool(source[offset:upper], pooling)
        else:
            rows = source[offset:upper]
        yield offset, rows
