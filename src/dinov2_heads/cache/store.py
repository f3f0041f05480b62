"""``FeatureStore``: extracted features on disk (memory-mapped) or in memory.

On disk a store is a directory::

    manifest.json          what was extracted, from which backbone, and how far it got
    class_tokens.bin       (count, n, D)     class tokens of the last n blocks, oldest first
    patch_mean.bin         (count, D)        mean patch token of the last block
    patch_tokens.bin       (count, n, N, D)  only when patch tokens were kept
    register_tokens.bin    (count, R, D)     only when register tokens were kept
    block_tokens.bin       (count, m, 1 + N, D)  class token, then patch tokens, of each of the
                                             m blocks the backbone was asked for (manifest
                                             "blocks": (index, final norm) pairs)
    sample_ids.bin         (count,)          int64 position (or id) of each sample in the data
    labels.bin             (count, ...)      int64 (or float32) labels, uint8 masks (H, W),
                                             float16 or float32 depth maps: one tensor, or
    labels.0.bin ...       (count, ...)      one file per label column (named in the manifest)

Each ``.bin`` file is raw little-endian C-order data with no header; its dtype and per-sample
shape are in the manifest (:mod:`dinov2_heads.cache.manifest`), so
``numpy.memmap(file, dtype, mode="r", shape=(count, *shape))`` reads it as well.

What a reader survives: opening checks every file's size against the manifest, and every read
first checks (one ``stat`` per array) that the files still hold the rows and are the files
that were opened, so a store cut, deleted or replaced while open raises
:class:`~dinov2_heads.cache.DamagedStoreError` instead of killing the process with SIGBUS. A
file cut during one read call cannot be caught (the read touches the lost pages); tensors a
reader took from :meth:`FeatureStore.array` are views of the mapped files and are not
checked. Flipped bytes are found by :meth:`FeatureStore.verify` (a sha256 per file).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinov2_heads.cache.dataset import FeatureDataset
from dinov2_heads.cache.errors import DamagedStoreError, StoreMismatchError
from dinov2_heads.cache.files import MappedFile, check_size, file_sha256
from dinov2_heads.cache.layout import format_bytes
from dinov2_heads.cache.manifest import (
    BLOCK_ARRAY,
    DEFAULT_LABEL,
    FORMAT_VERSION,
    ArraySpec,
    BackboneInfo,
    BlockKey,
    LabelColumn,
    LabelSpec,
    Layout,
    Manifest,
    describe_preprocessing,
    dtype_name,
    parse_dtype,
    read_manifest,
)
from dinov2_heads.cache.parts import FeatureParts, Parts, parts_for_heads
from dinov2_heads.features import Features
from dinov2_heads.fingerprint import weights_fingerprint

__all__ = ["FeatureStore", "Verification"]

Index = int | slice | Sequence[int] | Tensor


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :meth:`FeatureStore.verify` checked.

    Attributes:
        files: The data files checked.
        nbytes: Their total size.
        checksums: Whether their sha256 was compared (a store written by format version 1, or
            an unfinished one, records none: only sizes are checked then).
    """

    files: tuple[str, ...]
    nbytes: int
    checksums: bool


class FeatureStore:
    """Extracted features, labels and sample ids, on disk (memory-mapped) or in memory.

    Made by :func:`~dinov2_heads.cache.extract_features`; reopened with :meth:`open`, which
    refuses a store made with other backbone weights, another input size or other
    preprocessing. Arrays are held in the storage dtype (float16 by default) and come back as
    float32 :class:`~dinov2_heads.features.Features`, with the chosen blocks of dense heads in
    ``Features.blocks`` and the backbone depth. On disk nothing is read until it is indexed,
    so stores larger than memory work, and a reader that needs only some parts (a linear
    head: the pooled tokens) reads only those (``features(parts=...)``, ``parts_for``).

    Attributes:
        manifest: The store's description (the typed contents of ``manifest.json``).
        layout: What each sample holds (``manifest.layout``).
        path: The store directory, or ``None`` for a store in memory.
    """

    def __init__(
        self,
        manifest: Manifest,
        arrays: Mapping[str, Tensor] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if (arrays is None) == (path is None):
            raise ValueError("a FeatureStore needs either arrays (in memory) or a path (on disk)")
        if manifest.layout is None:
            raise ValueError(
                f"the feature store at {path or '<memory>'} holds no samples yet: its "
                "extraction stopped before the first batch; run extract_features again"
            )
        self.manifest = manifest
        self.layout: Layout = manifest.layout
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, Tensor] | None = dict(arrays) if arrays is not None else None
        self._mapped: dict[str, MappedFile] = {}

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
            features: B samples; patch and register tokens, the further blocks
                (``features.blocks``) and the depth are kept when present.
            labels: (B, ...) labels, or a dict of label columns.
            sample_ids: (B,) ids; ``0 .. B - 1`` by default.
            dtype: Storage dtype of the tokens.
        """
        count = features.batch_size
        arrays = _token_arrays(features, dtype)
        keep = tuple(name for name in arrays if name != BLOCK_ARRAY)
        spec, columns = _label_arrays(labels, count)
        arrays.update(columns)
        ids = sample_ids if sample_ids is not None else torch.arange(count)
        arrays["sample_ids"] = torch.as_tensor(ids).to("cpu", torch.int64).reshape(-1)
        if arrays["sample_ids"].shape[0] != count:
            raise ValueError(f"got {arrays['sample_ids'].shape[0]} sample ids for {count} samples")
        registers = features.register_tokens
        layout = Layout(
            input_size=None,
            grid=features.grid,
            embed_dim=features.embed_dim,
            n_blocks=features.n_blocks,
            num_register_tokens=int(registers.shape[1]) if registers is not None else 0,
            keep=keep,
            labels=spec,
            arrays={
                name: ArraySpec(f"{name}.bin", dtype_name(value.dtype), tuple(value.shape[1:]))
                for name, value in arrays.items()
            },
            depth=features.depth,
            blocks=tuple(sorted(features.blocks)),
        )
        manifest = Manifest(
            version=FORMAT_VERSION,
            backbone=BackboneInfo(),
            preprocessing=None,
            dtype=dtype_name(dtype),
            count=count,
            written=count,
            complete=True,
            layout=layout,
        )
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
        """Open a store on disk, checking that it is whole and fits how it will be used.

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
            DamagedStoreError: If the manifest is not valid or a data file does not have the
                size the manifest gives it; the message names the file.
            StoreMismatchError: If the store was made differently; the message names both.
            ValueError: If the store is incomplete and ``allow_incomplete`` is false.
        """
        manifest = read_manifest(path)
        if not manifest.complete and not allow_incomplete:
            raise ValueError(
                f"the feature store at {path} is incomplete ({manifest.written} of "
                f"{manifest.count or 'unknown'} samples written); run extract_features again "
                "with the same arguments to finish it, or pass allow_incomplete=True to read "
                "the finished samples"
            )
        store = cls(manifest, path=path)
        for spec in store.layout.arrays.values():
            check_size(Path(path), spec, manifest.written, exact=manifest.complete)
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
        where = self.path or "<memory>"
        if backbone is not None:
            expected = backbone if isinstance(backbone, str) else weights_fingerprint(backbone)
            stored = self.manifest.backbone.fingerprint or "(not recorded)"
            if expected != stored:
                variant = self.manifest.backbone.variant or "a custom backbone"
                raise StoreMismatchError(
                    f"the feature store at {where} holds features of other backbone weights: "
                    f"store fingerprint {stored} ({variant}), expected {expected}; extract the "
                    "features again for these weights into a new directory"
                )
        if input_size is not None:
            recorded = self.layout.input_size
            stored_size = "an unrecorded size" if recorded is None else "{}x{}".format(*recorded)
            wanted = f"{int(input_size[0])}x{int(input_size[1])}"
            if stored_size != wanted:
                raise StoreMismatchError(
                    f"the feature store at {where} was extracted from {stored_size} images, "
                    f"expected {wanted}; extract again at this size into a new directory"
                )
        if preprocessing is not None:
            wanted_pre = describe_preprocessing(preprocessing)
            if self.manifest.preprocessing != wanted_pre:
                raise StoreMismatchError(
                    f"the feature store at {where} was made with preprocessing "
                    f"{json.dumps(self.manifest.preprocessing)}, expected "
                    f"{json.dumps(wanted_pre)}; extract again with this preprocessing into a "
                    "new directory"
                )

    def verify(self) -> Verification:
        """Check every data file against the manifest: its size, then its sha256.

        Reads every byte of the store once (a few seconds per GB).

        Raises:
            DamagedStoreError: Naming each file whose size or checksum differs.
            ValueError: For a store in memory.
        """
        if self.path is None:
            raise ValueError("a store in memory has no files to verify")
        files, problems, nbytes = [], [], 0
        checksums = self.complete and all(s.sha256 for s in self.layout.arrays.values())
        for spec in self.layout.arrays.values():
            check_size(self.path, spec, self.written, exact=self.complete)
            files.append(spec.file)
            nbytes += self.written * spec.row_bytes
            if checksums and spec.row_bytes:
                digest = file_sha256(self.path / spec.file)
                if digest != spec.sha256:
                    problems.append(f"{spec.file} has sha256 {digest}, recorded {spec.sha256}")
        if problems:
            raise DamagedStoreError(
                f"the feature store at {self.path} is damaged: {'; '.join(problems)}. Its bytes "
                "changed after extraction; extract it again (overwrite=True)"
            )
        return Verification(tuple(files), nbytes, checksums)

    # ------------------------------------------------------------------ description

    def __len__(self) -> int:
        """Number of samples that can be read (all of them once complete)."""
        return self.written

    @property
    def written(self) -> int:
        """Samples written so far (equal to the count once complete)."""
        return self.manifest.written

    @property
    def complete(self) -> bool:
        """Whether extraction finished."""
        return self.manifest.complete

    @property
    def n_blocks(self) -> int:
        """n, the number of blocks whose class tokens are stored."""
        return self.layout.n_blocks

    @property
    def embed_dim(self) -> int:
        """D."""
        return self.layout.embed_dim

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (h, w) of the images."""
        return self.layout.grid

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The image size (H, W) the features were extracted at (``None`` if not recorded)."""
        return self.layout.input_size

    @property
    def keep(self) -> tuple[str, ...]:
        """The token arrays stored (``class_tokens`` and ``patch_mean`` always)."""
        return self.layout.keep

    @property
    def depth(self) -> int | None:
        """The backbone's number of blocks (``None`` when unknown).

        Recorded since store format version 3; an earlier store of a backbone built by this
        library takes it from the recorded backbone configuration.
        """
        if self.layout.depth is not None:
            return self.layout.depth
        config = self.manifest.backbone.config or {}
        depth = config.get("depth")
        return depth if isinstance(depth, int) and not isinstance(depth, bool) else None

    @property
    def blocks(self) -> tuple[BlockKey, ...]:
        """Every block whose patch tokens the store holds, as sorted (index, final norm) pairs.

        The chosen blocks (``block_tokens``) and, when patch tokens were kept, the last n
        blocks (normed); those need the depth to be named, and are left out without it.
        """
        held = set(self.layout.blocks)
        depth = self.depth
        if "patch_tokens" in self.keep and depth is not None:
            held.update((index, True) for index in range(depth - self.n_blocks, depth))
        return tuple(sorted(held))

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the token arrays (features are returned as float32)."""
        return parse_dtype(self.manifest.dtype)

    @property
    def fingerprint(self) -> str | None:
        """The weights fingerprint of the backbone the features come from (if recorded)."""
        return self.manifest.backbone.fingerprint

    @property
    def label_columns(self) -> list[str] | None:
        """Names of the label columns for dict labels; ``None`` for one label tensor or none."""
        labels = self.layout.labels
        return list(labels.names) if labels is not None and labels.kind == "columns" else None

    @property
    def label_names(self) -> tuple[str, ...]:
        """The name of every label: the columns, or the one label tensor's (``"label"``)."""
        labels = self.layout.labels
        return labels.names if labels is not None else ()

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Class names by label name, for the labels whose names are known.

        ``extract_features`` takes them from the data's ``vocabularies``
        (``ImageFolderDataset``: ``{"label": classes}``) or its ``class_names`` argument.
        """
        labels = self.layout.labels
        if labels is None:
            return {}
        return {c.name: c.class_names for c in labels.columns if c.class_names is not None}

    @property
    def has_labels(self) -> bool:
        """Whether labels were stored."""
        return self.layout.labels is not None

    @property
    def nbytes(self) -> int:
        """Size of the stored arrays in bytes (for the written samples)."""
        return self.written * self.layout.row_bytes

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        state = "" if self.complete else ", incomplete"
        blocks = f", blocks={list(self.layout.blocks)}" if self.layout.blocks else ""
        return (
            f"FeatureStore({where}: {len(self)} samples, n={self.n_blocks}, "
            f"D={self.embed_dim}, grid={self.grid}, keep={list(self.keep)}{blocks}, "
            f"{self.manifest.dtype}, {format_bytes(self.nbytes)}{state})"
        )

    # ------------------------------------------------------------------ reading

    def array(self, name: str) -> Tensor:
        """The raw array ``name`` (count, ...) in its storage dtype, memory-mapped on disk.

        The returned tensor is a view of the file: reads through it are not checked against
        the file being cut (see the module docstring).
        """
        if name not in self.layout.arrays:
            raise KeyError(f"the store has no array {name!r}; it has {sorted(self.layout.arrays)}")
        if self._memory is not None:
            return self._memory[name][: self.written]
        assert self.path is not None
        mapped = self._mapped.get(name)
        if mapped is None:
            mapped = MappedFile.map(self.path, self.layout.arrays[name], self.written)
            self._mapped[name] = mapped
        mapped.check()
        return mapped.tensor

    def features(
        self, index: Index, *, n_blocks: int | None = None, parts: Parts | None = None
    ) -> Features:
        """Float32 :class:`Features` of the samples at ``index`` (an int keeps the batch dim).

        Args:
            index: Sample positions, or a boolean mask with one value per sample.
            n_blocks: Keep only the last ``n_blocks`` stored blocks (all by default); only
                their class and patch tokens are read.
            parts: Read only these parts (see :class:`~dinov2_heads.cache.FeatureParts`):
                ``"pooled"`` for the class tokens and the mean patch token alone, a list of
                token arrays, or a ``FeatureParts`` that also names the blocks a dense head
                reads (``store.parts_for(heads)``). ``None`` reads everything the store
                holds, the chosen blocks of dense heads (``Features.blocks``) included.
                A part the store does not hold is left out, as without ``parts``; a part
                left out is ``None`` (or missing from ``Features.blocks``), and a head that
                needs it raises a ``ValueError`` saying so. What is read equals, part for
                part, what ``parts=None`` returns.
        """
        rows = _rows(index, self.written)
        n = self.check_blocks(n_blocks)
        first = self.n_blocks - n  # the last n of the stored blocks
        read_patches, read_registers, chosen_blocks = self._reads(parts, n)
        classes = self.array("class_tokens")[:, first:][rows].float()  # (B, n, D)
        patches = None
        if read_patches:
            stored = self.array("patch_tokens")[:, first:][rows].float()  # (B, n, N, D)
            patches = tuple(stored[:, i] for i in range(n))
        registers = None
        if read_registers:
            registers = self.array("register_tokens")[rows].float()
        chosen: dict[BlockKey, tuple[Tensor, Tensor]] = {}
        if chosen_blocks:
            tokens = self.array(BLOCK_ARRAY)  # (count, m, 1 + N, D)
            for j, key in enumerate(self.layout.blocks):
                if key in chosen_blocks:
                    # One block of every row: a view of the map, then only its rows are copied.
                    block = tokens[:, j][rows].float()  # (B, 1 + N, D)
                    chosen[key] = (block[:, 0], block[:, 1:])
        return Features(
            class_tokens=tuple(classes[:, i] for i in range(n)),
            patch_tokens=patches,
            patch_mean=self.array("patch_mean")[rows].float(),
            register_tokens=registers,
            grid=self.grid,
            blocks=chosen,
            depth=self.depth,
        )

    def parts_for(self, heads: torch.nn.Module) -> FeatureParts | None:
        """The parts ``heads`` read, for ``features(parts=...)``; ``None`` reads everything.

        Heads declare them as for ``FrozenBackbone.for_heads``: ``required_blocks(depth)``
        (dense heads) and ``feature_parts`` (``LinearHead``: the pooled tokens); a head that
        declares neither (your own) may read anything, and then everything is read. See
        :func:`~dinov2_heads.cache.parts.parts_for_heads`.
        """
        return parts_for_heads(heads, self.depth)

    def _reads(self, parts: Parts | None, n: int) -> tuple[bool, bool, frozenset[BlockKey]]:
        """Whether to read patch tokens, register tokens, and which chosen blocks."""
        stored_patches = "patch_tokens" in self.keep
        stored_registers = "register_tokens" in self.keep
        if parts is None:
            return stored_patches, stored_registers, frozenset(self.layout.blocks)
        wanted = FeatureParts.of(parts)
        read_patches = stored_patches and "patch_tokens" in wanted.tokens
        chosen = frozenset(key for key in wanted.blocks if key in self.layout.blocks)
        depth = self.depth
        if stored_patches and depth is not None:
            # Blocks among the last n normed ones are read from the patch tokens.
            from_patches = {(index, True) for index in range(depth - n, depth)}
            read_patches = read_patches or any(
                key in from_patches for key in wanted.blocks if key not in chosen
            )
        return read_patches, stored_registers and "register_tokens" in wanted.tokens, chosen

    def labels(self, index: Index, column: str | None = None) -> Tensor | dict[str, Tensor]:
        """Labels of the samples at ``index``: a tensor, or a dict of tensors for columns.

        Masks come back as int64 and depth maps as float32, as the data gave them, whatever
        their storage dtype (uint8, float16).

        Args:
            index: Sample positions, or a boolean mask with one value per sample.
            column: Return only this label as a tensor (a column's name, or the one label
                tensor's name, ``"label"`` unless the data named it).
        """
        spec = self.layout.labels
        if spec is None:
            raise ValueError(
                "this feature store has no labels; the data given to extract_features yielded "
                "images only"
            )
        rows = _rows(index, self.written)
        if column is not None:
            if column not in spec.names:
                raise KeyError(f"no label column {column!r}; the store has {list(spec.names)}")
            return _as_given(self.array(spec.column(column).array)[rows])
        if spec.kind == "tensor":
            return _as_given(self.array(spec.columns[0].array)[rows])
        return {c.name: _as_given(self.array(c.array)[rows]) for c in spec.columns}

    def sample_ids(self, index: Index | None = None) -> Tensor:
        """int64 ids of the samples (their positions in the data unless the data gave ids)."""
        ids = self.array("sample_ids")
        return ids if index is None else ids[_rows(index, self.written)]

    def dataset(
        self,
        *,
        label: str | None = None,
        n_blocks: int | None = None,
        heads: torch.nn.Module | None = None,
        parts: Parts | None = None,
        return_ids: bool = False,
    ) -> FeatureDataset:
        """A :class:`~dinov2_heads.cache.FeatureDataset` over this store."""
        return FeatureDataset(
            self, label=label, n_blocks=n_blocks, heads=heads, parts=parts, return_ids=return_ids
        )

    def to_memory(self) -> FeatureStore:
        """A copy of this store held in memory."""
        arrays = {name: self.array(name).clone() for name in self.layout.arrays}
        return FeatureStore(self.manifest, arrays=arrays)

    def check_blocks(self, n_blocks: int | None) -> int:
        """n for a head that needs the last ``n_blocks`` blocks (all stored ones for ``None``).

        Raises:
            StoreMismatchError: If the store holds fewer blocks.
        """
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

    def check_heads(self, heads: torch.nn.Module) -> None:
        """Raise :class:`StoreMismatchError` unless the store holds what ``heads`` read.

        ``heads`` is one head or a :class:`~dinov2_heads.heads.MultiHead`. Dense heads name
        their blocks with ``required_blocks(depth)``; classifiers with ``n_blocks`` need the
        class tokens of the last ``n_blocks`` blocks.

        Raises:
            StoreMismatchError: A head reads blocks the store lacks (both lists and the fix
                are named), or more class tokens than were stored.
        """
        where = self.path or "<memory>"
        fix = (
            "extract again into a new directory with extract_features(FrozenBackbone.for_heads("
            "backbone, heads), data, ...)"
        )
        leaves = list(heads.values()) if isinstance(heads, torch.nn.ModuleDict) else [heads]
        for head in leaves:
            n_blocks = getattr(head, "n_blocks", None)
            if isinstance(n_blocks, int) and not isinstance(n_blocks, bool):
                self.check_blocks(n_blocks)
            required = getattr(head, "required_blocks", None)
            if not callable(required):
                continue
            name = type(head).__name__
            depth = self.depth
            if depth is None:
                raise StoreMismatchError(
                    f"{name} reads chosen blocks of the backbone, but the feature store at "
                    f"{where} does not record the backbone depth to find them; {fix}"
                )
            needed = tuple(required(depth))
            missing = [key for key in needed if key not in self.blocks]
            if missing:
                raise StoreMismatchError(
                    f"{name} reads blocks {list(needed)} (index, final norm) but the feature "
                    f"store at {where} holds {list(self.blocks)}: {list(missing)} are missing; "
                    f"{fix}"
                )

    # Memory maps are not pickled: DataLoader workers map the files again.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mapped"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _token_arrays(features: Features, dtype: torch.dtype) -> dict[str, Tensor]:
    arrays: dict[str, Tensor] = {
        "class_tokens": torch.stack(features.class_tokens, dim=1),  # n x (B, D) -> (B, n, D)
        "patch_mean": features.patch_mean,
    }
    if features.patch_tokens is not None:
        arrays["patch_tokens"] = torch.stack(features.patch_tokens, dim=1)  # (B, n, N, D)
    if features.register_tokens is not None:
        arrays["register_tokens"] = features.register_tokens
    if features.blocks:
        # m x [(B, 1, D) class token, (B, N, D) patches] -> (B, m, 1 + N, D)
        arrays[BLOCK_ARRAY] = torch.stack(
            [torch.cat([c[:, None], p], dim=1) for _, (c, p) in sorted(features.blocks.items())],
            dim=1,
        )
    return {name: value.detach().to("cpu", dtype) for name, value in arrays.items()}


def _as_given(labels: Tensor) -> Tensor:
    """Labels as the data gave them: uint8 masks as int64, float16 depth maps as float32."""
    if labels.dtype == torch.uint8:
        return labels.long()
    if labels.dtype in (torch.float16, torch.bfloat16):
        return labels.float()
    return labels


def _label_arrays(
    labels: Tensor | Mapping[str, Tensor] | None, count: int
) -> tuple[LabelSpec | None, dict[str, Tensor]]:
    if labels is None:
        return None, {}
    if isinstance(labels, Mapping):
        spec = LabelSpec(
            "columns", tuple(LabelColumn(str(k), f"labels.{i}") for i, k in enumerate(labels))
        )
        values = list(labels.values())
    else:
        spec = LabelSpec("tensor", (LabelColumn(DEFAULT_LABEL, "labels"),))
        values = [labels]
    arrays = {}
    for column, value in zip(spec.columns, values, strict=True):
        tensor = torch.as_tensor(value).cpu()
        if tensor.ndim == 0 or tensor.shape[0] != count:
            raise ValueError(
                f"labels must have a leading dimension of B = {count}, got {tuple(tensor.shape)}"
            )
        arrays[column.array] = tensor.float() if tensor.is_floating_point() else tensor.long()
    return spec, arrays


def _rows(index: Index, count: int) -> slice | Tensor:
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
