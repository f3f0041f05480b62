"""The feature cache: run the frozen backbone once, then train heads from stored features."""

from dinov2_heads.cache.dataset import FeatureDataset, collate_features
from dinov2_heads.cache.directory import remove_store
from dinov2_heads.cache.errors import (
    DamagedStoreError,
    SharedMemoryError,
    StoreLockedError,
    StoreMismatchError,
    WorkerDiedError,
)
from dinov2_heads.cache.extract import extract_features
from dinov2_heads.cache.layout import Keep, estimate_store_size
from dinov2_heads.cache.manifest import Manifest
from dinov2_heads.cache.parts import FeatureParts
from dinov2_heads.cache.store import FeatureStore, Verification

__all__ = [
    "DamagedStoreError",
    "FeatureDataset",
    "FeatureParts",
    "FeatureStore",
    "Keep",
    "Manifest",
    "SharedMemoryError",
    "StoreLockedError",
    "StoreMismatchError",
    "Verification",
    "WorkerDiedError",
    "collate_features",
    "estimate_store_size",
    "extract_features",
    "remove_store",
]
