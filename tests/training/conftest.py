"""Synthetic features and problems for the training tests."""

from __future__ import annotations

import torch
from torch import Tensor

from dinov2_heads.cache import FeatureDataset, FeatureStore
from dinov2_heads.features import Features


def random_features(
    batch: int = 8, dim: int = 8, n_blocks: int = 4, seed: int = 0, grid: tuple[int, int] = (2, 2)
) -> Features:
    """Pooled Features of random tokens: n x (B, D) class tokens and a (B, D) patch mean."""
    generator = torch.Generator().manual_seed(seed)
    return Features(
        class_tokens=tuple(torch.randn(batch, dim, generator=generator) for _ in range(n_blocks)),
        patch_tokens=None,
        patch_mean=torch.randn(batch, dim, generator=generator),
        register_tokens=None,
        grid=grid,
    )


def separable(count: int, seed: int, dim: int = 16, classes: int = 4) -> tuple[Features, Tensor]:
    """A 4-class problem: class c adds 3 to feature c of every token; unit Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    means = torch.zeros(classes, dim)
    means[torch.arange(classes), torch.arange(classes)] = 3.0

    def tokens() -> Tensor:
        return means[labels] + torch.randn(count, dim, generator=generator)

    features = Features(
        class_tokens=(tokens(),),
        patch_tokens=None,
        patch_mean=tokens(),
        register_tokens=None,
        grid=(1, 1),
    )
    return features, labels


def dataset(features: Features, labels: Tensor) -> FeatureDataset:
    return FeatureDataset(FeatureStore.from_features(features, labels))
