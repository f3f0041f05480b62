"""``ManifestDataset``: images listed in a CSV or JSON file with several label columns.

A manifest is a table with one row per image: a column with the image path and any number of
label columns. An empty cell (or a JSON ``null`` or absent key) means the label is unknown; it
becomes :data:`MISSING_LABEL` (-100), the ``ignore_index`` the losses skip.

CSV::

    path,type,colour,orientation
    img/0001.jpg,suv,red,front
    img/0002.jpg,sedan,,rear

JSON (a list of objects) or JSON Lines (``.jsonl``, one object per line)::

    [{"path": "img/0001.jpg", "type": "suv", "colour": "red"}, ...]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinov2_heads.data._dataset import ImageDataset, Transform
from dinov2_heads.data.loading import OnError
from dinov2_heads.labels import MISSING_LABEL

logger = logging.getLogger(__name__)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, str | None]]:
    """The rows of a CSV, JSON or JSON Lines manifest, as ``{column: text or None}``.

    The format follows the file ending: ``.csv`` / ``.tsv``, ``.json``, ``.jsonl``. Empty or
    blank cells and JSON ``null`` become ``None``; other JSON values become their text
    (``3`` -> ``"3"``).

    Raises:
        ValueError: Unknown format, text that is not UTF-8 or not valid JSON, a header that
            repeats a column name, or a CSV/TSV row with more non-empty cells than the header
            (an unquoted delimiter inside a cell); the message names the file and line.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"manifest {file} does not exist or is not a file")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        raise ValueError(
            f"unknown manifest format {file.suffix!r} for {file}; use .csv, .tsv, .json or .jsonl"
        )
    raw: list[Mapping[str, Any]]
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs write.
        encoding = "utf-8-sig" if suffix in (".csv", ".tsv") else "utf-8"
        # newline="" keeps line breaks inside quoted CSV cells as they are.
        with file.open(encoding=encoding, newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"manifest {file} is not UTF-8 text ({error}); save it as UTF-8"
        ) from error
    if suffix in (".csv", ".tsv"):
        raw = _read_table(file, text, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"manifest {file} is not valid JSON: {error.msg} at line {error.lineno}, "
                f"column {error.colno}"
            ) from error
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise ValueError(
                f"manifest {file} must hold a JSON list of objects, one per image, e.g. "
                '[{"path": "a.jpg", "type": "suv"}]'
            )
        raw = data
    else:  # .jsonl
        raw = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{file}, line {number}: not valid JSON ({error.msg} at column "
                    f"{error.colno}); a .jsonl manifest holds one JSON object per line"
                ) from error
            if not isinstance(row, dict):
                raise ValueError(f"{file}, line {number}: expected a JSON object, got {line!r}")
            raw.append(row)
    return [{str(k): _cell(v) for k, v in row.items() if k is not None} for row in raw]


def _read_table(file: Path, text: str, delimiter: str) -> list[Mapping[str, Any]]:
    """The rows of a CSV or TSV text, refusing what would silently shift or drop cells."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames
    if not header:
        raise ValueError(f"manifest {file} is empty; expected a header row first")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(
            f"manifest {file} repeats the column name(s) {repeated} in its header; a repeated "
            "column would hide the values of the other, so give every column its own name"
        )
    rows: list[Mapping[str, Any]] = []
    for row in reader:
        # DictReader puts the cells beyond the header under the key None; empty ones (a
        # trailing delimiter, as some spreadsheet exports write) carry nothing to lose.
        extra = row.get(None)
        if extra and any(cell.strip() for cell in extra):
            raise ValueError(
                f"{file}, line {reader.line_num}: {len(header) + len(extra)} cells but the "
                f"header has {len(header)}; quote cells that contain {delimiter!r}"
            )
        rows.append(row)
    return rows


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | dict):
        raise ValueError(f"manifest cells must be plain values, got {value!r}")
    text = str(value).strip()
    return text or None


class ManifestDataset(ImageDataset[dict[str, int]]):
    """Images and labels from a CSV/JSON manifest; items are ``(image (3, H, W), labels)``.

    ``labels`` maps each label column to a class index, or to :data:`MISSING_LABEL` (-100)
    where the cell was empty. The default collate function turns a batch of them into
    ``{column: (B,) int64}``, ready for per-head losses with ``ignore_index=-100``.

    Args:
        path: The manifest (``.csv``, ``.tsv``, ``.json`` or ``.jsonl``).
        transform: PIL image -> (3, H, W); default the ``"official_eval"`` preset.
        image_column: The column with the image paths.
        label_columns: The label columns, in order (one name for a single column); default
            every other column.
        root: Folder that relative image paths start from; default the manifest's folder.
        vocabularies: Fixed class names per column (e.g. those saved with a trained head); a
            value outside them is an error. Columns not given get their sorted distinct values.
        on_error: ``"raise"`` (an unreadable image raises when loaded) or ``"skip"`` (every
            image is checked now; unreadable ones are logged, listed in :attr:`skipped` and
            left out).

    Attributes:
        label_columns: The label columns, in order.
        vocabularies: Column -> class names; index i of a column is ``vocabularies[col][i]``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Transform | None = None,
        *,
        image_column: str = "path",
        label_columns: Sequence[str] | str | None = None,
        root: str | os.PathLike[str] | None = None,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self.manifest = Path(path)
        rows = read_manifest(self.manifest)
        if not rows:
            raise ValueError(f"manifest {self.manifest} lists no images")
        columns = list(dict.fromkeys(key for row in rows for key in row))
        if image_column not in columns:
            raise ValueError(
                f"manifest {self.manifest} has no image column {image_column!r}; its columns "
                f"are {columns}; pass image_column= to name the one with the paths"
            )
        if label_columns is None:
            label_columns = [c for c in columns if c != image_column]
        elif isinstance(label_columns, str):
            label_columns = [label_columns]  # one column, not a sequence of letters
        unknown = [c for c in label_columns if c not in columns]
        if unknown:
            raise ValueError(
                f"label columns {unknown} are not in manifest {self.manifest} (columns: {columns})"
            )
        if not label_columns:
            raise ValueError(f"manifest {self.manifest} has no label columns besides the paths")
        self.label_columns: tuple[str, ...] = tuple(label_columns)
        self.vocabularies: dict[str, tuple[str, ...]] = self._vocabularies(rows, vocabularies)
        lookup = {c: {name: i for i, name in enumerate(v)} for c, v in self.vocabularies.items()}

        base = Path(root) if root is not None else self.manifest.parent
        paths: list[Path] = []
        labels: list[dict[str, int]] = []
        for number, row in enumerate(rows, 1):
            image = row.get(image_column)
            if image is None:
                raise ValueError(
                    f"{self.manifest}, row {number}: the image column {image_column!r} is empty"
                )
            paths.append(base / image)
            record: dict[str, int] = {}
            for column in self.label_columns:
                value = row.get(column)
                if value is None:
                    record[column] = MISSING_LABEL
                elif value in lookup[column]:
                    record[column] = lookup[column][value]
                else:
                    raise ValueError(
                        f"{self.manifest}, row {number}: {column}={value!r} is not one of the "
                        f"given class names {list(self.vocabularies[column])}"
                    )
            labels.append(record)
        super().__init__(paths, labels, transform, on_error)
        missing = {
            c: int((self.labels[:, i] == MISSING_LABEL).sum())
            for i, c in enumerate(self.label_columns)
        }
        if any(missing.values()):
            logger.info("%s: missing labels per column %s", self.manifest, missing)

    def _vocabularies(
        self,
        rows: list[dict[str, str | None]],
        given: Mapping[str, Sequence[str]] | None,
    ) -> dict[str, tuple[str, ...]]:
        given = given or {}
        extra = sorted(set(given) - set(self.label_columns))
        if extra:
            raise ValueError(
                f"vocabularies given for {extra}, which are not label columns "
                f"{list(self.label_columns)}"
            )
        result: dict[str, tuple[str, ...]] = {}
        for column in self.label_columns:
            if column in given:
                names = tuple(str(name) for name in given[column])
                if len(set(names)) != len(names):
                    raise ValueError(f"the class names given for {column!r} repeat: {names}")
                result[column] = names
            else:
                values = {row[column] for row in rows if row.get(column) is not None}
                result[column] = tuple(sorted(v for v in values if v is not None))
                if not result[column]:
                    logger.warning("label column %r of %s is empty", column, self.manifest)
        return result

    @property
    def labels(self) -> Tensor:
        """(len, L) int64: every item's class index per label column, -100 where missing."""
        return torch.tensor(
            [[record[c] for c in self.label_columns] for record in self._labels],
            dtype=torch.int64,
        ).reshape(len(self._labels), len(self.label_columns))

    @property
    def num_classes(self) -> dict[str, int]:
        """Column -> number of classes K."""
        return {column: len(names) for column, names in self.vocabularies.items()}
