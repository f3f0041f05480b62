"""``FeatureStore``: extracted features on disk (memory-mapped) or in memory.

On disk a store is a directory::

    manifest.json          what was extracted, from which backbone, and how far it got
    class_tokens.bin       (count, n, D)     class tokens of the last n blocks, oldest first
    patch_mean.bin         (count, D)        mean patch token of the last block
    patch_tokens.bin       (count, n, N, D)  only when patch tokens were kept
    register_tokens.bin    (count, R, D)     only when register tokens were kept
    sample_ids.bin         (count,)          int64 position (or id) of each sample in the data
    labels.0.bin ...       (count, ...)      int64 (or float32) labels, one file per column

Each ``.bin`` file is raw little-endian C-order data with no header; its dtype and per-sample
shape are in the manifest, so ``numpy.memmap(file, dtype, mode="r", shape=(count, *shape))``
reads it as well. Rows are written in data order at their final offsets, and the manifest is
replaced atomically after the data is flushed, so its ``written`` count is always a prefix of
rows that are really on disk: a killed extraction resumes from there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.errors import Dinov2HeadsError
from dinov2_heads.features import Features
from dinov2_heads.fingerprint import tensor_bytes, weights_fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "MANIFEST",
    "FeatureStore",
    "StoreMismatchError",
    "describe_preprocessing",
    "format_bytes",
]

#: The manifest's file name inside a store directory.
MANIFEST = "manifest.json"
#: The ``format`` entry of every manifest, with its version.
FORMAT = "dinov2-heads/feature-store"
FORMAT_VERSION = 1

#: Token arrays a store may hold, in the order they are documented.
TOKEN_ARRAYS = ("class_tokens", "patch_mean", "patch_tokens", "register_tokens")

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int64": torch.int64,
}


class StoreMismatchError(Dinov2HeadsError, ValueError):
    """A store was opened for a different backbone, input size, preprocessing or layout."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16`` for the dtypes a store can hold."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unsupported store dtype {name!r}; expected one of {', '.join(_DTYPES)}"
        ) from None


def format_bytes(size: float) -> str:
    """A human-readable size: ``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def describe_preprocessing(preprocessing: Any) -> Any:
    """The JSON form of a preprocessing description, as stored in the manifest.

    Accepts ``None``, a string (``"resize 256, center crop 224, ImageNet mean/std"``), a
    mapping of JSON values, or a dataclass such as :class:`dinov2_heads.data.Preprocess`
    (stored as its class name and fields). Tuples become lists, so a description compares
    equal to itself after a round trip through the manifest.
    """
    if preprocessing is None or isinstance(preprocessing, str):
        return preprocessing
    if dataclasses.is_dataclass(preprocessing) and not isinstance(preprocessing, type):
        value: Any = {"type": type(preprocessing).__name__, **dataclasses.asdict(preprocessing)}
    elif isinstance(preprocessing, Mapping):
        value = dict(preprocessing)
    else:
        raise TypeError(
            "preprocessing must be a string, a mapping or a dataclass describing how images "
            f"were prepared, got {type(preprocessing).__name__}"
        )
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except TypeError as error:
        raise TypeError(f"preprocessing must be JSON-serialisable: {error}") from None


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array of a store: its file, dtype and per-sample shape."""

    file: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def row_numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_bytes(self) -> int:
        return self.row_numel * parse_dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ArraySpec:
        return cls(str(value["file"]), str(value["dtype"]), tuple(int(s) for s in value["shape"]))


def backbone_description(backbone: torch.nn.Module) -> dict[str, Any]:
    """Variant, config, fingerprint and weight dtype of a backbone, for the manifest.

    A :class:`~dinov2_heads.features.FrozenBackbone` is described by the backbone it wraps
    (their state dicts, hence their fingerprints, are the same).
    """
    inner = getattr(backbone, "backbone", backbone)
    config = getattr(inner, "config", None)
    to_dict = getattr(config, "to_dict", None)
    dtype = next((p.dtype for p in inner.parameters() if p.is_floating_point()), torch.float32)
    return {
        "variant": getattr(inner, "variant", None),
        "config": to_dict() if callable(to_dict) else None,
        "fingerprint": weights_fingerprint(inner),
        "weights_dtype": dtype_name(dtype),
    }


class FeatureStore:
    """Extracted features, labels and sample ids, on disk (memory-mapped) or in memory.

    Made by :func:`~dinov2_heads.cache.extract_features`; reopened with :meth:`open`, which
    refuses a store made with other backbone weights, another input size or other
    preprocessing. Arrays are held in the storage dtype (float16 by default) and come back as
    float32 :class:`~dinov2_heads.features.Features`. On disk nothing is read until it is
    indexed, so stores larger than memory work.

    Attributes:
        manifest: The store's description (the contents of ``manifest.json``).
        path: The store directory, or ``None`` for a store in memory.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        arrays: Mapping[str, Tensor] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if (arrays is None) == (path is None):
            raise ValueError("a FeatureStore needs either arrays (in memory) or a path (on disk)")
        self.manifest: dict[str, Any] = json.loads(json.dumps(manifest))
        self.path = Path(path) if path is not None else None
        self._arrays: dict[str, Tensor] | None = dict(arrays) if arrays is not None else None
        specs = self.manifest.get("arrays") or {}
        self._specs = {name: ArraySpec.from_json(spec) for name, spec in specs.items()}

    # ------------------------------------------------------------------ opening

    @classmethod
    def from_features(
        cls,
        features: Features,
        labels: Tensor | Mapping[str, Tensor] | None = None,
        *,
        sample_ids: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> FeatureStore:
        """An in-memory store of features computed elsewhere (the backbone is not recorded).

        Args:
            features: B samples; patch and register tokens are kept when present.
            labels: (B, ...) labels, or a dict of label columns.
            sample_ids: (B,) ids; ``0 .. B - 1`` by default.
            dtype: Storage dtype of the tokens.
        """
        count = features.batch_size
        arrays: dict[str, Tensor] = {
            "class_tokens": torch.stack(features.class_tokens, dim=1),  # (B, n, D)
            "patch_mean": features.patch_mean,
        }
        if features.patch_tokens is not None:
            arrays["patch_tokens"] = torch.stack(features.patch_tokens, dim=1)  # (B, n, N, D)
        if features.register_tokens is not None:
            arrays["register_tokens"] = features.register_tokens
        arrays = {name: value.detach().to("cpu", dtype) for name, value in arrays.items()}
        keep = list(arrays)
        label_entry: dict[str, Any] | None = None
        columns: dict[str, Tensor] = {}
        if isinstance(labels, Mapping):
            label_entry = {"kind": "columns", "columns": [str(k) for k in labels]}
            columns = {_label_array(i): value for i, value in enumerate(labels.values())}
        elif labels is not None:
            label_entry = {"kind": "tensor"}
            columns = {"labels": labels}
        for name, value in columns.items():
            value = torch.as_tensor(value).cpu()
            if value.ndim == 0 or value.shape[0] != count:
                raise ValueError(
                    f"labels must have a leading dimension of B = {count}, got {tuple(value.shape)}"
                )
            arrays[name] = value.float() if value.is_floating_point() else value.long()
        ids = sample_ids if sample_ids is not None else torch.arange(count)
        arrays["sample_ids"] = torch.as_tensor(ids).to("cpu", torch.int64).reshape(-1)
        if arrays["sample_ids"].shape[0] != count:
            raise ValueError(f"got {arrays['sample_ids'].shape[0]} sample ids for {count} samples")
        h, w = features.grid
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": {"variant": None, "config": None, "fingerprint": None},
            "preprocessing": None,
            "dtype": dtype_name(dtype),
            "count": count,
            "written": count,
            "complete": True,
            "input_size": None,
            "grid": [h, w],
            "embed_dim": features.embed_dim,
            "n_blocks": features.n_blocks,
            "num_register_tokens": (
                int(features.register_tokens.shape[1])
                if features.register_tokens is not None
                else 0
            ),
            "keep": keep,
            "labels": label_entry,
            "arrays": {
                name: ArraySpec(
                    f"{name}.bin", dtype_name(value.dtype), tuple(value.shape[1:])
                ).to_json()
                for name, value in arrays.items()
            },
        }
        return cls(manifest, arrays=arrays)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        backbone: torch.nn.Module | str | None = None,
        input_size: tuple[int, int] | None = None,
        preprocessing: Any = None,
        allow_incomplete: bool = False,
    ) -> FeatureStore:
        """Open a store on disk, checking that it fits how it will be used.

        Args:
            path: The store directory.
            backbone: The backbone (or :class:`~dinov2_heads.features.FrozenBackbone`) the
                features must come from, or its :func:`~dinov2_heads.fingerprint.
                weights_fingerprint`; ``None`` skips the check.
            input_size: The (H, W) images must have had; ``None`` skips the check.
            preprocessing: The preprocessing the images must have had (as given to
                ``extract_features``); ``None`` skips the check.
            allow_incomplete: Open an interrupted extraction and read its finished rows.

        Raises:
            FileNotFoundError: If there is no store at ``path``.
            StoreMismatchError: If the store was made differently; the message names both.
            ValueError: If the store is incomplete and ``allow_incomplete`` is false.
        """
        manifest = read_manifest(path)
        store = cls(manifest, path=path)
        if not store.complete and not allow_incomplete:
            raise ValueError(
                f"the feature store at {path} is incomplete ({store.written} of "
                f"{store.manifest.get('count') or 'unknown'} samples written); run "
                "extract_features again with the same arguments to finish it, or pass "
                "allow_incomplete=True to read the finished samples"
            )
        store.check(backbone=backbone, input_size=input_size, preprocessing=preprocessing)
        return store

    def check(
        self,
        *,
        backbone: torch.nn.Module | str | None = None,
        input_size: tuple[int, int] | None = None,
        preprocessing: Any = None,
    ) -> None:
        """Raise :class:`StoreMismatchError` unless the store was made this way.

        Each argument left ``None`` is not checked. The error names the stored and the
        expected value.
        """
        if backbone is not None:
            expected = backbone if isinstance(backbone, str) else weights_fingerprint(backbone)
            stored = self.manifest["backbone"]["fingerprint"] or "(not recorded)"
            if expected != stored:
                variant = self.manifest["backbone"].get("variant") or "a custom backbone"
                raise StoreMismatchError(
                    f"the feature store at {self.path or '<memory>'} holds features of other "
                    f"backbone weights: store fingerprint {stored} ({variant}), expected "
                    f"{expected}; extract the features again for these weights into a new "
                    "directory"
                )
        if input_size is not None:
            recorded = self.manifest.get("input_size")
            stored_size = "an unrecorded size" if recorded is None else "{}x{}".format(*recorded)
            wanted = f"{int(input_size[0])}x{int(input_size[1])}"
            if stored_size != wanted:
                raise StoreMismatchError(
                    f"the feature store at {self.path or '<memory>'} was extracted from "
                    f"{stored_size} images, expected {wanted}; extract again at this size into "
                    "a new directory"
                )
        if preprocessing is not None:
            stored_pre = self.manifest.get("preprocessing")
            wanted_pre = describe_preprocessing(preprocessing)
            if stored_pre != wanted_pre:
                raise StoreMismatchError(
                    f"the feature store at {self.path or '<memory>'} was made with "
                    f"preprocessing {json.dumps(stored_pre)}, expected "
                    f"{json.dumps(wanted_pre)}; extract again with this preprocessing into a "
                    "new directory"
                )

    # ------------------------------------------------------------------ description

    def __len__(self) -> int:
        """Number of samples that can be read (all of them once complete)."""
        return self.written

    @property
    def written(self) -> int:
        """Samples written so far (equal to the count once complete)."""
        return int(self.manifest["written"])

    @property
    def complete(self) -> bool:
        """Whether extraction finished."""
        return bool(self.manifest["complete"])

    @property
    def n_blocks(self) -> int:
        """n, the number of blocks whose class tokens are stored."""
        return int(self.manifest["n_blocks"])

    @property
    def embed_dim(self) -> int:
        """D."""
        return int(self.manifest["embed_dim"])

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (h, w) of the images."""
        h, w = self.manifest["grid"]
        return int(h), int(w)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The image size (H, W) the features were extracted at (``None`` if not recorded)."""
        size = self.manifest.get("input_size")
        return None if size is None else (int(size[0]), int(size[1]))

    @property
    def keep(self) -> tuple[str, ...]:
        """The token arrays stored (``class_tokens`` and ``patch_mean`` always)."""
        return tuple(self.manifest["keep"])

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the token arrays (features are returned as float32)."""
        return parse_dtype(self.manifest["dtype"])

    @property
    def fingerprint(self) -> str | None:
        """The weights fingerprint of the backbone the features come from (if recorded)."""
        value = self.manifest["backbone"]["fingerprint"]
        return None if value is None else str(value)

    @property
    def label_columns(self) -> list[str] | None:
        """Names of the label columns for dict labels; ``None`` for one label tensor or none."""
        labels = self.manifest.get("labels")
        if not labels or labels["kind"] != "columns":
            return None
        return list(labels["columns"])

    @property
    def has_labels(self) -> bool:
        """Whether labels were stored."""
        return bool(self.manifest.get("labels"))

    @property
    def nbytes(self) -> int:
        """Size of the stored arrays in bytes (for the written samples)."""
        return self.written * sum(spec.row_bytes for spec in self._specs.values())

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        state = "" if self.complete else ", incomplete"
        return (
            f"FeatureStore({where}: {len(self)} samples, n={self.n_blocks}, "
            f"D={self.embed_dim}, grid={self.grid}, keep={list(self.keep)}, "
            f"{self.manifest['dtype']}, {format_bytes(self.nbytes)}{state})"
        )

    # ------------------------------------------------------------------ reading

    def array(self, name: str) -> Tensor:
        """The raw array ``name`` (count, ...) in its storage dtype, memory-mapped on disk."""
        if name not in self._specs:
            raise KeyError(f"the store has no array {name!r}; it has {sorted(self._specs)}")
        if self._arrays is None:
            self._arrays = {}
        if name not in self._arrays:
            assert self.path is not None
            self._arrays[name] = _map_file(self.path, self._specs[name], self.written)
        return self._arrays[name][: self.written]

    def features(
        self, index: int | slice | Sequence[int] | Tensor, *, n_blocks: int | None = None
    ) -> Features:
        """Float32 :class:`Features` of the samples at ``index`` (an int keeps the batch dim).

        Args:
            index: Sample positions, or a boolean mask with one value per sample.
            n_blocks: Keep only the last ``n_blocks`` stored blocks (all by default).
        """
        rows = _rows(index, self.written)
        n = self._blocks(n_blocks)
        classes = self.array("class_tokens")[rows].float()
        patches = None
        if "patch_tokens" in self._specs:
            stored = self.array("patch_tokens")[rows].float()
            patches = tuple(stored[:, i] for i in range(self.n_blocks - n, self.n_blocks))
        registers = None
        if "register_tokens" in self._specs:
            registers = self.array("register_tokens")[rows].float()
        return Features(
            class_tokens=tuple(classes[:, i] for i in range(self.n_blocks - n, self.n_blocks)),
            patch_tokens=patches,
            patch_mean=self.array("patch_mean")[rows].float(),
            register_tokens=registers,
            grid=self.grid,
        )

    def labels(
        self, index: int | slice | Sequence[int] | Tensor, column: str | None = None
    ) -> Tensor | dict[str, Tensor]:
        """Labels of the samples at ``index``: a tensor, or a dict of tensors for columns.

        Args:
            index: Sample positions, or a boolean mask with one value per sample.
            column: For dict labels, return only this column as a tensor.
        """
        labels = self.manifest.get("labels")
        if not labels:
            raise ValueError(
                "this feature store has no labels; the data given to extract_features yielded "
                "images only"
            )
        rows = _rows(index, self.written)
        if labels["kind"] == "tensor":
            if column is not None:
                raise ValueError(
                    f"this store has a single label tensor, not columns; got column={column!r}"
                )
            return self.array("labels")[rows]
        columns = list(labels["columns"])
        if column is not None:
            if column not in columns:
                raise KeyError(f"no label column {column!r}; the store has {columns}")
            return self.array(_label_array(columns.index(column)))[rows]
        return {name: self.array(_label_array(i))[rows] for i, name in enumerate(columns)}

    def sample_ids(self, index: int | slice | Sequence[int] | Tensor | None = None) -> Tensor:
        """int64 ids of the samples (their positions in the data unless the data gave ids)."""
        ids = self.array("sample_ids")
        return ids if index is None else ids[_rows(index, self.written)]

    def dataset(
        self,
        *,
        label: str | None = None,
        n_blocks: int | None = None,
        return_ids: bool = False,
    ) -> Any:
        """A :class:`~dinov2_heads.cache.FeatureDataset` over this store."""
        from dinov2_heads.cache.dataset import FeatureDataset

        return FeatureDataset(self, label=label, n_blocks=n_blocks, return_ids=return_ids)

    def to_memory(self) -> FeatureStore:
        """A copy of this store held in memory."""
        arrays = {name: self.array(name).clone() for name in self._specs}
        return FeatureStore(self.manifest, arrays=arrays)

    def _blocks(self, n_blocks: int | None) -> int:
        if n_blocks is None:
            return self.n_blocks
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
            raise ValueError(f"n_blocks must be a positive int, got {n_blocks!r}")
        if n_blocks > self.n_blocks:
            raise StoreMismatchError(
                f"the head needs the class tokens of the last {n_blocks} blocks but the feature "
                f"store at {self.path or '<memory>'} holds {self.n_blocks}; extract again with "
                f"FrozenBackbone(..., n_last_blocks={n_blocks})"
            )
        return n_blocks

    # Memory maps are not pickled: DataLoader workers reopen the files instead.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_arrays"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _label_array(index: int) -> str:
    return f"labels.{index}"


def _rows(index: int | slice | Sequence[int] | Tensor, count: int) -> slice | Tensor:
    """Rows of ``count`` samples: an int keeps the batch dim; a bool mask selects its True rows."""
    if isinstance(index, bool):
        raise TypeError("a sample index must be an int, a slice, a sequence of ints or a tensor")
    if isinstance(index, int):
        # A slice past the end would be silently empty rather than an error.
        if not -count <= index < count:
            raise IndexError(f"sample {index} is out of range for {count} samples")
        return slice(index % count, index % count + 1)
    if isinstance(index, slice):
        return index
    rows = index if isinstance(index, Tensor) else torch.as_tensor(list(index))
    if rows.dtype == torch.bool:
        # A mask (``labels == 2``) selects rows; as integers it would mean rows 0 and 1.
        if rows.shape != (count,):
            raise IndexError(
                f"a boolean mask of {rows.numel()} values for {count} samples; a mask needs "
                "one value per sample"
            )
        return rows.nonzero().flatten()
    return rows.long()


def _map_file(root: Path, spec: ArraySpec, count: int) -> Tensor:
    dtype = parse_dtype(spec.dtype)
    if count == 0 or spec.row_numel == 0:
        return torch.empty((count, *spec.shape), dtype=dtype)
    file = root / spec.file
    needed = count * spec.row_bytes
    size = file.stat().st_size if file.exists() else 0
    if size < needed:
        raise ValueError(
            f"{file} holds {size} bytes but the manifest promises {count} rows of "
            f"{spec.row_bytes} bytes ({needed}); the store is damaged: extract it again"
        )
    # shared=False maps the file copy-on-write: pages are read lazily and the file is never
    # modified through the tensor.
    flat = torch.from_file(str(file), shared=False, size=count * spec.row_numel, dtype=dtype)
    return flat.view(count, *spec.shape)


# ---------------------------------------------------------------------- manifest files


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the store at ``path`` (``FileNotFoundError`` when there is none)."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(
            f"no feature store at {path}: {MANIFEST} not found; create one with extract_features"
        )
    manifest = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not a dinov2-heads feature store manifest")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{file} was written by a newer dinov2-heads (store format version "
            f"{manifest['version']}, this one reads up to {FORMAT_VERSION}); upgrade dinov2-heads"
        )
    return manifest


def write_manifest(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync the directory)."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(path) / MANIFEST, text.encode("utf-8"))


class StoreWriter:
    """Writes rows of a store at their final offsets; commits progress atomically.

    Several processes may write disjoint rows of the same store at once (distributed
    extraction); only one of them (rank 0) commits the manifest.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.specs = {name: ArraySpec.from_json(spec) for name, spec in manifest["arrays"].items()}
        self._fds: dict[str, int] = {}

    def write(self, start: int, rows: Mapping[str, Tensor]) -> None:
        """Write ``rows`` (each (B, ...)) as samples ``start .. start + B - 1``."""
        for name, spec in self.specs.items():
            tensor = rows[name]
            if tuple(tensor.shape[1:]) != spec.shape:
                raise ValueError(
                    f"{name}: a batch has per-sample shape {tuple(tensor.shape[1:])} but the "
                    f"store holds {spec.shape}; every sample must have the same shape"
                )
            tensor = tensor.to(parse_dtype(spec.dtype))
            _pwrite_all(self._fd(name), tensor_bytes(tensor), start * spec.row_bytes)

    def flush(self) -> None:
        """Make the written rows durable (fsync every file)."""
        for fd in self._fds.values():
            os.fsync(fd)

    def commit(self, written: int, *, complete: bool = False) -> None:
        """Record that samples ``0 .. written - 1`` are on disk (call :meth:`flush` first)."""
        self.manifest["written"] = written
        self.manifest["complete"] = complete
        if complete:
            self.manifest["count"] = written
            for name, spec in self.specs.items():
                os.truncate(self._fd(name), written * spec.row_bytes)
                os.fsync(self._fd(name))
        write_manifest(self.root, self.manifest)

    def close(self) -> None:
        """Close the files."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
            self._fds[name] = os.open(self.root / self.specs[name].file, flags, 0o644)
        return self._fds[name]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    # A write may do less than asked (Linux caps one call at about 2 GiB), hence the loop.
    view = data
    while len(view):
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:  # Windows has no pwrite; each process has its own file offset, so seek + write.
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, view)
        view = view[done:]
        offset += done
