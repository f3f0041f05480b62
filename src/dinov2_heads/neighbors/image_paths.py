"""The image file of each stored sample, from the ``dataset.json`` beside a feature store.

``dinov2-heads extract`` writes ``dataset.json`` into the store folder; its ``paths`` list holds
the image of each position in the data, in order, and a store's sample ids are those positions.
Stores made in Python (``extract_features``) have no such file unless you write one: a JSON
object with a ``"paths"`` list of strings.
"""

from __future__ import annotations

import json
import logging

from dinov2_heads.cache import FeatureStore

logger = logging.getLogger(__name__)

__all__ = ["DATASET_FILE", "store_image_paths"]

#: The file beside a store that lists its images (``dinov2-heads extract`` writes it).
DATASET_FILE = "dataset.json"


def store_image_paths(store: FeatureStore) -> list[str | None] | None:
    """One image path per stored row (``None`` for a row whose id the file does not list).

    Returns ``None`` when the store is in memory or has no readable ``dataset.json``; a file
    that cannot be read is reported in the log, not raised, since paths only label results.
    """
    if store.path is None:
        return None
    file = store.path / DATASET_FILE
    if not file.is_file():
        return None
    try:
        listed = json.loads(file.read_text(encoding="utf-8"))["paths"]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise TypeError("'paths' is not a list of strings")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s cannot be read (%s); image paths are left out", file, error)
        return None
    ids = store.sample_ids().tolist()
    paths: list[str | None] = [listed[i] if 0 <= i < len(listed) else None for i in ids]
    unknown = sum(p is None for p in paths)
    if unknown:
        logger.warning(
            "%s lists %d images but %d of the %d stored samples have ids outside it; their "
            "paths are left out",
            file,
            len(listed),
            unknown,
            len(paths),
        )
    return paths
