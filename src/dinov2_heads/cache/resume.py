"""Resuming a store: the same settings as the run that started it, and its rows really there.

A run resumes a store only when it has the same backbone weights, preprocessing, dtype and
sample count (:func:`check_header`) and, from its first batch on, the same layout
(:func:`check_layout`). Before resuming, the data files are measured against the manifest
(:func:`rows_to_keep`): a file that was lost or cut moves the resume point back to the rows
every file still holds, so no missing row is ever recorded as written.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dinov2_heads.cache.errors import StoreMismatchError
from dinov2_heads.cache.files import rows_on_disk
from dinov2_heads.cache.manifest import LabelSpec, Layout, Manifest

logger = logging.getLogger(__name__)

__all__ = ["check_header", "check_layout", "rows_to_keep"]


def _mismatch(root: Path | None, what: str, old: object, new: object) -> StoreMismatchError:
    return StoreMismatchError(
        f"the feature store at {root} was started with {what} {old}, but this run has "
        f"{new}; resume with the same settings, or pass overwrite=True (or a new path) to "
        "start again"
    )


def check_header(root: Path, stored: Manifest, new: Manifest) -> None:
    """Refuse to resume with other weights, preprocessing, dtype or sample count."""
    old_dtype, new_dtype = stored.backbone.weights_dtype, new.backbone.weights_dtype
    if old_dtype is not None and new_dtype is not None and old_dtype != new_dtype:
        raise _mismatch(root, "backbone weights dtype", old_dtype, new_dtype)
    old_print, new_print = stored.backbone.fingerprint, new.backbone.fingerprint
    if old_print != new_print:
        raise _mismatch(
            root,
            "backbone fingerprint",
            f"{old_print} ({stored.backbone.variant or 'custom'})",
            f"{new_print} ({new.backbone.variant or 'custom'})",
        )
    if stored.preprocessing != new.preprocessing:
        raise _mismatch(
            root,
            "preprocessing",
            repr(stored.preprocessing),
            repr(new.preprocessing) + _differing_keys(stored.preprocessing, new.preprocessing),
        )
    if stored.dtype != new.dtype:
        raise _mismatch(root, "dtype", stored.dtype, new.dtype)
    if stored.count is not None and new.count is not None and stored.count != new.count:
        raise _mismatch(root, "a dataset of", f"{stored.count} samples", new.count)


def _differing_keys(old: object, new: object) -> str:
    """`` (they differ in: draft)`` for two mappings, naming the settings that differ."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return f" (they differ in: {', '.join(keys)})"


def check_layout(root: Path | None, stored: Layout, new: Layout) -> Layout:
    """Refuse to resume when the first batch of this run gives another layout.

    Class names the stored layout does not know (a version 1 store) and the backbone depth
    (versions 1 and 2) match any, and are learnt from this run.

    Returns:
        The layout to record from now on (the stored one, without checksums).
    """
    stored = _learn_class_names(stored, new).without_checksums()
    if stored.depth is None:
        stored = dataclasses.replace(stored, depth=new.depth)
    for field, what in (
        ("input_size", "input size (H, W)"),
        ("n_blocks", "n_blocks"),
        ("depth", "a backbone depth of"),
        ("keep", "keep"),
        ("blocks", "blocks (index, final norm)"),
        ("labels", "labels"),
        ("grid", "patch grid"),
        ("embed_dim", "embed_dim"),
        ("num_register_tokens", "register tokens"),
        ("arrays", "arrays"),
    ):
        old_value, new_value = getattr(stored, field), getattr(new, field)
        if old_value != new_value:
            raise _mismatch(root, what, _show(old_value), _show(new_value))
    return stored


def _learn_class_names(stored: Layout, new: Layout) -> Layout:
    """``stored`` with the class names of ``new`` for the columns whose names it lacks."""
    if stored.labels is None or new.labels is None:
        return stored
    learnt = {column.name: column.class_names for column in new.labels.columns}
    columns = tuple(
        dataclasses.replace(column, class_names=learnt.get(column.name))
        if column.class_names is None
        else column
        for column in stored.labels.columns
    )
    return dataclasses.replace(stored, labels=LabelSpec(stored.labels.kind, columns))


def _show(value: object) -> str:
    if isinstance(value, LabelSpec):
        kinds = [
            f"{column.name}"
            + (f" ({len(column.class_names)} classes)" if column.class_names else "")
            for column in value.columns
        ]
        return f"{value.kind} {kinds}"
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)


def rows_to_keep(root: Path, manifest: Manifest) -> int:
    """How many of the recorded rows every data file really holds (a lost file holds none)."""
    layout = manifest.layout
    if layout is None or not manifest.written:
        return manifest.written
    held = {name: rows_on_disk(root, spec) for name, spec in layout.arrays.items()}
    keep = min([manifest.written, *held.values()])
    if keep < manifest.written:
        short = sorted(name for name, rows in held.items() if rows < manifest.written)
        logger.warning(
            "the feature store at %s records %d samples but %s hold(s) only %d (lost or cut); "
            "resuming from sample %d",
            root,
            manifest.written,
            ", ".join(layout.arrays[name].file for name in short),
            keep,
            keep,
        )
    return keep
