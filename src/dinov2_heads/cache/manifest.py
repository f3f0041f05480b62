"""The store manifest: a versioned description of a feature store, read and written as JSON.

``manifest.json`` records which backbone made the features, how the images were prepared, the
layout of every array (file, dtype, per-sample shape, checksum), the label columns with their
class names, and how far the extraction got. :class:`Manifest` is its typed form; reading
checks every field and names the file and the field when one is wrong, so a hand-damaged
manifest is one clear :class:`~dinov2_heads.cache.DamagedStoreError`.

Format versions: 1 (dinov2-heads 0.1.0.dev0: label columns by position, no checksums), 2
(label columns by name with their class names, a sha256 per data file, a manifest written
before any data file) and 3 (the backbone depth, chosen blocks in ``block_tokens``, uint8
masks and float16 depth maps as labels). Earlier manifests are read as the current version; a
store is written in the current version.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.cache.errors import DamagedStoreError

__all__ = [
    "BLOCK_ARRAY",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "TOKEN_ARRAYS",
    "ArraySpec",
    "BackboneInfo",
    "BlockKey",
    "LabelColumn",
    "LabelSpec",
    "Layout",
    "Manifest",
    "describe_preprocessing",
    "dtype_name",
    "is_store_manifest",
    "manifest_path",
    "parse_dtype",
    "read_manifest",
    "write_manifest",
]

#: The manifest's file name inside a store directory.
MANIFEST = "manifest.json"
#: The ``format`` entry of every manifest.
FORMAT = "dinov2-heads/feature-store"
#: The version this library writes; it reads this one and every earlier one.
FORMAT_VERSION = 3
#: Token arrays a store may hold, in the order they are documented.
TOKEN_ARRAYS = ("class_tokens", "patch_mean", "patch_tokens", "register_tokens")
#: The array of the chosen blocks' tokens: (count, m, 1 + N, D), class token first.
BLOCK_ARRAY = "block_tokens"
#: The name of a single (not dict) label when the data does not name it.
DEFAULT_LABEL = "label"

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int64": torch.int64,
    "uint8": torch.uint8,
}
# The dtypes of token arrays (the manifest's "dtype"); the others are for labels and ids.
_TOKEN_DTYPES = ("float16", "bfloat16", "float32")
# Array names are file names too: letters and underscores, and a column number for labels.
_ARRAY_NAME = re.compile(r"[a-z_]+(\.[0-9]+)?")
_LABEL_ARRAY = re.compile(r"labels(\.[0-9]+)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: A block as (absolute 0-based index, whether the final LayerNorm was applied).
BlockKey = tuple[int, bool]


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


def describe_preprocessing(preprocessing: Any) -> Any:
    """The JSON form of a preprocessing description, as stored in the manifest.

    Accepts ``None``, a string (``"resize 256, center crop 224, ImageNet mean/std"``), a
    mapping of JSON values, or a dataclass such as :class:`dinov2_heads.data.Preprocess`
    (stored as its class name and fields, or as its ``description()`` when it has that
    method). Tuples become lists, so a description compares equal to itself after a round
    trip through the manifest.
    """
    if preprocessing is None or isinstance(preprocessing, str):
        return preprocessing
    describe = getattr(preprocessing, "description", None)
    if callable(describe) and not isinstance(preprocessing, type):
        value: Any = describe()
    elif dataclasses.is_dataclass(preprocessing) and not isinstance(preprocessing, type):
        value = {"type": type(preprocessing).__name__, **dataclasses.asdict(preprocessing)}
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
class BackboneInfo:
    """The backbone the features come from.

    Attributes:
        variant: The variant name (``"dinov2_vits14"``), ``None`` for a custom backbone.
        config: The backbone's constructor arguments as JSON, when it has a config.
        fingerprint: :func:`~dinov2_heads.fingerprint.weights_fingerprint` of its weights,
            ``None`` for features computed elsewhere.
        weights_dtype: The dtype of its floating-point weights.
    """

    variant: str | None = None
    config: Mapping[str, Any] | None = None
    fingerprint: str | None = None
    weights_dtype: str | None = None


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array of a store: its file, dtype, per-sample shape and (once complete) checksum."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str | None = None

    @property
    def row_numel(self) -> int:
        """Values per sample."""
        return math.prod(self.shape)

    @property
    def row_bytes(self) -> int:
        """Bytes per sample."""
        return self.row_numel * parse_dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class LabelColumn:
    """One label column: its name, the array that holds it and its class names (if known)."""

    name: str
    array: str
    class_names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """The labels of a store: one tensor (``kind="tensor"``, one column) or named columns."""

    kind: Literal["tensor", "columns"]
    columns: tuple[LabelColumn, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in stored order."""
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> LabelColumn:
        """The column called ``name`` (``KeyError`` naming the columns when there is none)."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"no label column {name!r}; the store has {list(self.names)}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """What every sample of a store holds; fixed by the first batch of an extraction.

    Attributes:
        input_size: The image size (H, W), ``None`` when not recorded.
        grid: The patch grid (h, w).
        embed_dim: D.
        n_blocks: n, the blocks whose tokens are stored.
        num_register_tokens: R stored per sample (0 when register tokens are not kept).
        keep: The token arrays stored, in :data:`TOKEN_ARRAYS` order.
        labels: The label columns, ``None`` without labels.
        arrays: Every array by name: token arrays, ``sample_ids``, the label arrays and
            :data:`BLOCK_ARRAY` when blocks are stored.
        depth: The backbone's number of blocks, ``None`` when unknown (format versions 1 and 2
            did not record it).
        blocks: The blocks whose class and patch tokens :data:`BLOCK_ARRAY` holds, as sorted
            (absolute index, final norm applied) pairs; empty when there is no such array.
    """

    input_size: tuple[int, int] | None
    grid: tuple[int, int]
    embed_dim: int
    n_blocks: int
    num_register_tokens: int
    keep: tuple[str, ...]
    labels: LabelSpec | None
    arrays: Mapping[str, ArraySpec]
    depth: int | None = None
    blocks: tuple[BlockKey, ...] = ()

    @property
    def row_bytes(self) -> int:
        """Bytes per sample over every array."""
        return sum(spec.row_bytes for spec in self.arrays.values())

    def without_checksums(self) -> Layout:
        """The same layout with no checksums (what an extraction in progress records)."""
        arrays = {
            name: dataclasses.replace(spec, sha256=None) for name, spec in self.arrays.items()
        }
        return dataclasses.replace(self, arrays=arrays)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The typed contents of ``manifest.json``.

    Attributes:
        version: The format version of the file it was read from (written as the current one).
        backbone: The backbone the features come from.
        preprocessing: The JSON description of how images were prepared (see
            :func:`describe_preprocessing`).
        dtype: The storage dtype of the token arrays.
        count: Samples in the data, ``None`` while unknown (a stream of batches).
        written: Samples ``0 .. written - 1`` are on disk.
        complete: Whether the extraction finished.
        layout: What each sample holds; ``None`` until the first batch is stored.
    """

    version: int
    backbone: BackboneInfo
    preprocessing: Any
    dtype: str
    count: int | None
    written: int
    complete: bool
    layout: Layout | None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json`` in the current format version."""
        layout = self.layout
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": dataclasses.asdict(self.backbone),
            "preprocessing": self.preprocessing,
            "dtype": self.dtype,
            "count": self.count,
            "written": self.written,
            "complete": self.complete,
            **(_layout_json(layout) if layout is not None else {"grid": None}),
        }

    @classmethod
    def from_json(cls, value: object, source: str | os.PathLike[str]) -> Manifest:
        """Check and read a manifest's JSON; ``source`` names it in errors.

        Raises:
            DamagedStoreError: Naming ``source`` and the first field that is wrong.
        """
        return _parse_manifest(_Fields(value, str(source), ""))


def _layout_json(layout: Layout) -> dict[str, Any]:
    labels = layout.labels
    return {
        "input_size": list(layout.input_size) if layout.input_size is not None else None,
        "grid": list(layout.grid),
        "embed_dim": layout.embed_dim,
        "n_blocks": layout.n_blocks,
        "num_register_tokens": layout.num_register_tokens,
        "keep": list(layout.keep),
        "depth": layout.depth,
        "blocks": [[index, norm] for index, norm in layout.blocks],
        "labels": None
        if labels is None
        else {
            "kind": labels.kind,
            "columns": [
                {
                    "name": column.name,
                    "array": column.array,
                    "class_names": list(column.class_names)
                    if column.class_names is not None
                    else None,
                }
                for column in labels.columns
            ],
        },
        "arrays": {
            name: {
                "file": spec.file,
                "dtype": spec.dtype,
                "shape": list(spec.shape),
                "sha256": spec.sha256,
            }
            for name, spec in layout.arrays.items()
        },
    }


# ---------------------------------------------------------------------- reading


class _Fields:
    """A JSON object being read: typed getters whose errors name the file and the field."""

    def __init__(self, value: object, source: str, where: str) -> None:
        self.source = source
        self.where = where
        if not isinstance(value, dict):
            raise self.error(f"must be a JSON object, got {type(value).__name__}")
        self.value: dict[str, object] = value

    def error(self, problem: str, key: str | None = None) -> DamagedStoreError:
        field = f"{self.where}{key}" if key is not None else self.where.rstrip(".")
        subject = f"'{field}' " if field else ""
        return DamagedStoreError(
            f"{self.source} is not a valid feature store manifest: {subject}{problem}; restore "
            "the file, or extract the store again (extract_features with overwrite=True)"
        )

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def get(self, key: str) -> object:
        if key not in self.value:
            raise self.error("is missing", key)
        return self.value[key]

    def child(self, key: str) -> _Fields:
        return _Fields(self.get(key), self.source, f"{self.where}{key}.")

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"must be an integer >= {minimum}, got {value!r}", key)
        return value

    def optional_integer(self, key: str, minimum: int = 0) -> int | None:
        return self.integer(key, minimum) if self.has(key) else None

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", key)
        return value

    def string(self, key: str, allowed: tuple[str, ...] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            expected = "one of " + ", ".join(map(repr, allowed)) if allowed else "a string"
            raise self.error(f"must be {expected}, got {value!r}", key)
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if self.has(key) else None

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(f"must be a list of strings, got {value!r}", key)
        return tuple(value)

    def integers(self, key: str, *, length: int | None = None, minimum: int = 0) -> tuple[int, ...]:
        value = self.get(key)
        if (
            not isinstance(value, list)
            or (length is not None and len(value) != length)
            or not all(
                isinstance(item, int) and not isinstance(item, bool) and item >= minimum
                for item in value
            )
        ):
            size = f"{length} " if length is not None else ""
            raise self.error(f"must be a list of {size}integers >= {minimum}, got {value!r}", key)
        return tuple(value)

    def pair(self, key: str) -> tuple[int, int]:
        first, second = self.integers(key, length=2, minimum=1)
        return first, second


def _parse_manifest(fields: _Fields) -> Manifest:
    if fields.value.get("format") != FORMAT:
        raise fields.error(f"'format' must be {FORMAT!r}, got {fields.value.get('format')!r}")
    version = fields.integer("version", minimum=1)
    if version > FORMAT_VERSION:
        raise DamagedStoreError(
            f"{fields.source} was written by a newer dinov2-heads (store format version "
            f"{version}, this one reads up to {FORMAT_VERSION}); upgrade dinov2-heads"
        )
    backbone = fields.child("backbone")
    config = backbone.value.get("config")
    if config is not None and not isinstance(config, dict):
        raise backbone.error(f"must be a JSON object or null, got {config!r}", "config")
    info = BackboneInfo(
        variant=backbone.optional_string("variant"),
        config=config,
        fingerprint=backbone.optional_string("fingerprint"),
        weights_dtype=backbone.optional_string("weights_dtype"),
    )
    dtype = fields.string("dtype", _TOKEN_DTYPES)
    count = fields.optional_integer("count")
    written = fields.integer("written")
    complete = fields.boolean("complete")
    if count is not None and written > count:
        raise fields.error(f"is {written}, more than the count of {count} samples", "written")
    if complete and count != written:
        raise fields.error(f"is true but {written} of {count} samples are written", "complete")
    has_layout = fields.has("grid")
    if not has_layout and written:
        raise fields.error(f"is missing but {written} samples are written", "grid")
    return Manifest(
        version=version,
        backbone=info,
        preprocessing=fields.value.get("preprocessing"),
        dtype=dtype,
        count=count,
        written=written,
        complete=complete,
        layout=_parse_layout(fields, version) if has_layout else None,
    )


def _parse_layout(fields: _Fields, version: int) -> Layout:
    keep = fields.strings("keep")
    unknown = [name for name in keep if name not in TOKEN_ARRAYS]
    if unknown or "class_tokens" not in keep or "patch_mean" not in keep:
        raise fields.error(
            f"must list class_tokens, patch_mean and others of {list(TOKEN_ARRAYS)}, got "
            f"{list(keep)}",
            "keep",
        )
    input_size = fields.pair("input_size") if fields.has("input_size") else None
    labels = _parse_labels(fields, version) if fields.has("labels") else None
    arrays = _parse_arrays(fields.child("arrays"), version)
    depth = fields.optional_integer("depth", minimum=1)
    blocks = _parse_blocks(fields, depth) if fields.has("blocks") else ()
    label_arrays = [column.array for column in labels.columns] if labels is not None else []
    needed = [*keep, "sample_ids", *label_arrays, *([BLOCK_ARRAY] if blocks else [])]
    if sorted(needed) != sorted(arrays):
        raise fields.error(
            f"must describe the arrays {sorted(needed)} (the kept tokens, the sample ids, "
            f"the labels and the blocks' tokens), got {sorted(arrays)}",
            "arrays",
        )
    grid = fields.pair("grid")
    embed_dim = fields.integer("embed_dim", minimum=1)
    if blocks:
        expected = [len(blocks), 1 + grid[0] * grid[1], embed_dim]
        if list(arrays[BLOCK_ARRAY].shape) != expected:
            raise fields.error(
                f"must be {expected} (blocks, 1 + patches, D) for {len(blocks)} blocks, got "
                f"{list(arrays[BLOCK_ARRAY].shape)}",
                f"arrays.{BLOCK_ARRAY}.shape",
            )
    return Layout(
        input_size=input_size,
        grid=grid,
        embed_dim=embed_dim,
        n_blocks=fields.integer("n_blocks", minimum=1),
        num_register_tokens=fields.integer("num_register_tokens"),
        keep=keep,
        labels=labels,
        arrays=arrays,
        depth=depth,
        blocks=blocks,
    )


def _parse_blocks(fields: _Fields, depth: int | None) -> tuple[BlockKey, ...]:
    raw = fields.get("blocks")
    below = f" below the depth {depth}" if depth is not None else ""
    problem = (
        f"must be a sorted list of distinct [index, norm] pairs (index an integer >= 0{below}, "
        f"norm true or false), got {raw!r}"
    )
    if not isinstance(raw, list):
        raise fields.error(problem, "blocks")
    blocks: list[BlockKey] = []
    for entry in raw:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or isinstance(entry[0], bool)
            or not isinstance(entry[0], int)
            or not isinstance(entry[1], bool)
            or entry[0] < 0
            or (depth is not None and entry[0] >= depth)
        ):
            raise fields.error(problem, "blocks")
        blocks.append((entry[0], entry[1]))
    if blocks != sorted(set(blocks)):
        raise fields.error(problem, "blocks")
    return tuple(blocks)


def _parse_labels(fields: _Fields, version: int) -> LabelSpec:
    labels = fields.child("labels")
    kind = labels.string("kind", ("tensor", "columns"))
    if version == 1:
        # Version 1: one "labels" array, or columns by position in "labels.{i}" arrays.
        if kind == "tensor":
            return LabelSpec("tensor", (LabelColumn(DEFAULT_LABEL, "labels"),))
        names = labels.strings("columns")
        return LabelSpec(
            "columns", tuple(LabelColumn(n, f"labels.{i}") for i, n in enumerate(names))
        )
    raw = labels.get("columns")
    if not isinstance(raw, list) or not raw or (kind == "tensor" and len(raw) != 1):
        raise labels.error(
            f"must be a non-empty list (one entry for a tensor), got {raw!r}", "columns"
        )
    columns = []
    for index, entry in enumerate(raw):
        column = _Fields(entry, labels.source, f"{labels.where}columns[{index}].")
        class_names = column.strings("class_names") if column.has("class_names") else None
        array = column.string("array")
        if not _LABEL_ARRAY.fullmatch(array):
            raise column.error(f"must be 'labels' or 'labels.<i>', got {array!r}", "array")
        columns.append(LabelColumn(column.string("name"), array, class_names))
    if len({c.name for c in columns}) != len(columns):
        raise labels.error(f"repeat a name: {[c.name for c in columns]}", "columns")
    return LabelSpec("tensor" if kind == "tensor" else "columns", tuple(columns))


def _parse_arrays(arrays: _Fields, version: int) -> dict[str, ArraySpec]:
    result = {}
    for name in arrays.value:
        entry = arrays.child(name)
        if not _ARRAY_NAME.fullmatch(name):
            raise arrays.error(f"is not an array name a store uses ({name!r})", name)
        file = entry.string("file")
        if file != f"{name}.bin":
            raise entry.error(f"must be {name}.bin, got {file!r}", "file")
        sha256 = entry.optional_string("sha256") if version > 1 else None
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise entry.error(f"must be 64 hexadecimal digits, got {sha256!r}", "sha256")
        result[name] = ArraySpec(
            file=file,
            dtype=entry.string("dtype", tuple(_DTYPES)),
            shape=entry.integers("shape"),
            sha256=sha256,
        )
    return result


# ---------------------------------------------------------------------- files


def manifest_path(root: str | os.PathLike[str]) -> Path:
    """The manifest file of the store at ``root``."""
    return Path(root) / MANIFEST


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """The manifest of the store at ``root``.

    Raises:
        FileNotFoundError: If ``root`` holds no ``manifest.json``.
        DamagedStoreError: If it is not valid JSON or not a valid manifest (the message names
            the file and the field).
    """
    file = manifest_path(root)
    if not file.is_file():
        inside = _stores_inside(Path(root))
        if inside:
            raise FileNotFoundError(
                f"no feature store at {root}: it is a folder of stores ({', '.join(inside)}); "
                f"pass one of them, e.g. {Path(root) / inside[0]}"
            )
        raise FileNotFoundError(
            f"no feature store at {root}: {MANIFEST} not found; create one with extract_features"
        )
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DamagedStoreError(
            f"{file} is not a valid feature store manifest: it is not UTF-8 text ({error}); "
            "restore the file, or extract the store again"
        ) from None
    except json.JSONDecodeError as error:
        raise DamagedStoreError(
            f"{file} is not a valid feature store manifest: it is not valid JSON ({error.msg} "
            f"at line {error.lineno}, column {error.colno}); restore the file, or extract the "
            "store again"
        ) from None
    return Manifest.from_json(value, file)


def is_store_manifest(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds a ``manifest.json`` that names the feature store format.

    Only the ``format`` entry is looked at: a damaged manifest of a store is still one.
    """
    file = manifest_path(root)
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and value.get("format") == FORMAT


def write_manifest(root: str | os.PathLike[str], manifest: Manifest) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync the directory)."""
    text = json.dumps(manifest.to_json(), indent=2) + "\n"
    atomic_write_bytes(manifest_path(root), text.encode("utf-8"))


def _stores_inside(folder: Path) -> list[str]:
    """The names of the feature stores directly inside ``folder``, sorted (none if unreadable)."""
    try:
        return sorted(child.name for child in folder.iterdir() if (child / MANIFEST).is_file())
    except OSError:
        return []
