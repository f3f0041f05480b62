"""The feature cache: run the frozen backbone once, then train heads from stored features."""

from dinov2_heads.cache.dataset import FeatureDataset, collate_features
from dinov2_heads.cache.extract import Keep, estimate_store_size, extract_features
from dinov2_heads.cache.store import FeatureStore, StoreMismatchError

__all__ = [
    "FeatureDataset",
    "FeatureStore",
    "Keep",
    "StoreMismatchError",
    "collate_features",
    "estimate_store_size",
    "extract_features",
]
