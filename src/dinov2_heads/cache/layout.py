"""What a store keeps per sample: the ``keep`` presets, sizes, and the rows of each batch.

The first batch of an extraction fixes the :class:`~dinov2_heads.cache.manifest.Layout`
(:func:`plan_layout`); every batch, the first included, is then checked against it and turned
into rows (:func:`batch_rows`): same image size, the same label columns by name with the same
kind of values, finite features.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from dinov2_heads.cache.batches import Batch
from dinov2_heads.cache.errors import StoreMismatchError
from dinov2_heads.cache.manifest import (
    DEFAULT_LABEL,
    TOKEN_ARRAYS,
    ArraySpec,
    LabelColumn,
    LabelSpec,
    Layout,
    dtype_name,
    parse_dtype,
)
from dinov2_heads.features import Features
from dinov2_heads.labels import check_class_labels

logger = logging.getLogger(__name__)

__all__ = ["Keep", "batch_rows", "estimate_store_size", "format_bytes", "plan_layout"]

#: Which tokens to store: ``"pooled"`` (class tokens of the n blocks and the mean patch token:
#: all that linear heads need), ``"patch_tokens"`` (also every patch token of the n blocks, for
#: heads such as ``Conv1dNeck``), ``"all"`` (also the register tokens when the backbone has
#: them), or a sequence of array names from ``TOKEN_ARRAYS``.
Keep = str | Sequence[str]

_PRESETS = {
    "pooled": ("class_tokens", "patch_mean"),
    "patch_tokens": ("class_tokens", "patch_mean", "patch_tokens"),
    "all": TOKEN_ARRAYS,
}


def resolve_keep(keep: Keep) -> tuple[tuple[str, ...], bool]:
    """The arrays to keep, and whether register tokens are optional (asked for by "all")."""
    if isinstance(keep, str):
        if keep not in _PRESETS:
            raise ValueError(
                f"keep={keep!r} is not a preset; use 'pooled', 'patch_tokens', 'all' or a list "
                f"of {list(TOKEN_ARRAYS)}"
            )
        return _PRESETS[keep], keep == "all"
    names = list(keep)
    unknown = [name for name in names if name not in TOKEN_ARRAYS]
    if unknown:
        raise ValueError(
            f"unknown token arrays {unknown} in keep; choose from {list(TOKEN_ARRAYS)}"
        )
    # Features cannot exist without class tokens and the mean patch token.
    chosen = {"class_tokens", "patch_mean", *names}
    return tuple(name for name in TOKEN_ARRAYS if name in chosen), False


def format_bytes(size: float) -> str:
    """A human-readable size: ``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def estimate_store_size(
    frozen: nn.Module,
    input_size: tuple[int, int],
    count: int,
    *,
    keep: Keep = "pooled",
    dtype: torch.dtype = torch.float16,
) -> int:
    """Bytes a store of ``count`` images will take, before extracting anything.

    Counts the token arrays, int64 sample ids and one int64 label per sample.

    Args:
        frozen: A :class:`~dinov2_heads.features.FrozenBackbone` (its ``embed_dim``,
            ``n_last_blocks``, ``patch_size`` and ``num_register_tokens`` are used).
        input_size: Image size (H, W).
        count: Number of images.
        keep: As for :func:`~dinov2_heads.cache.extract_features`.
        dtype: Storage dtype of the tokens.

    Example:
        ViT-S/14 (D = 384) at 224x224 keeps 1.5 KiB per image pooled, 193.5 KiB with patch
        tokens: 1.9 GB per 10,000 images.
    """
    names, _ = resolve_keep(keep)
    dim = int(getattr(frozen, "embed_dim"))  # noqa: B009 - documented requirement
    n = int(getattr(frozen, "n_last_blocks", 1))
    patch = int(getattr(frozen, "patch_size", 14))
    registers = int(getattr(frozen, "num_register_tokens", 0) or 0)
    num_patches = (input_size[0] // patch) * (input_size[1] // patch)
    numel = {
        "class_tokens": n * dim,
        "patch_mean": dim,
        "patch_tokens": n * num_patches * dim,
        "register_tokens": registers * dim,
    }
    per_sample = sum(numel[name] for name in names) * dtype.itemsize + 8 + 8
    return count * per_sample


# ---------------------------------------------------------------------- the first batch


def plan_layout(
    features: Features,
    batch: Batch,
    *,
    keep: tuple[str, ...],
    registers_optional: bool,
    dtype: torch.dtype,
    class_names: Mapping[str, Sequence[str]],
    names_given: bool,
) -> Layout:
    """The layout that the first batch (and its features) fixes for the whole store.

    Args:
        class_names: Class names by label name (from the data's ``vocabularies`` or given).
        names_given: ``class_names`` were passed explicitly: refuse names that fit no label.
    """
    if "register_tokens" in keep and features.register_tokens is None:
        if not registers_optional:
            raise ValueError(
                "keep asks for register tokens but the backbone gives none; use a _reg "
                "variant or leave register_tokens out of keep"
            )
        keep = tuple(name for name in keep if name != "register_tokens")
    tokens = _token_rows(features[:1], keep, dtype)
    arrays = {
        name: ArraySpec(f"{name}.bin", dtype_name(value.dtype), tuple(value.shape[1:]))
        for name, value in tokens.items()
    }
    labels = _label_spec(batch.labels, class_names, names_given)
    if labels is not None:
        values = batch.labels if isinstance(batch.labels, dict) else {"": batch.labels}
        for column, value in zip(labels.columns, values.values(), strict=True):
            assert isinstance(value, Tensor)
            arrays[column.array] = ArraySpec(
                f"{column.array}.bin", dtype_name(value.dtype), tuple(value.shape[1:])
            )
    arrays["sample_ids"] = ArraySpec("sample_ids.bin", "int64", ())
    height, width = batch.images.shape[-2:]
    registers = features.register_tokens
    return Layout(
        input_size=(int(height), int(width)),
        grid=features.grid,
        embed_dim=features.embed_dim,
        n_blocks=features.n_blocks,
        num_register_tokens=(
            int(registers.shape[1]) if registers is not None and "register_tokens" in keep else 0
        ),
        keep=keep,
        labels=labels,
        arrays=arrays,
    )


def _label_spec(
    labels: Tensor | dict[str, Tensor] | None,
    class_names: Mapping[str, Sequence[str]],
    names_given: bool,
) -> LabelSpec | None:
    if labels is None:
        if names_given and class_names:
            raise ValueError(
                f"class_names were given for {sorted(class_names)} but the data has no labels"
            )
        return None
    if isinstance(labels, Tensor):
        # One label tensor takes the name of the only vocabulary the data has, if any.
        if len(class_names) == 1:
            ((name, names),) = class_names.items()
            return LabelSpec("tensor", (LabelColumn(name, "labels", tuple(map(str, names))),))
        if names_given and class_names:
            raise ValueError(
                f"class_names name {len(class_names)} labels ({sorted(class_names)}) but the "
                "data has one label tensor; give the class names of that one label"
            )
        return LabelSpec("tensor", (LabelColumn(DEFAULT_LABEL, "labels"),))
    unknown = sorted(set(class_names) - set(labels))
    if names_given and unknown:
        raise ValueError(
            f"class_names were given for {unknown}, which are not label columns of the data "
            f"({list(labels)})"
        )
    columns = tuple(
        LabelColumn(
            name,
            f"labels.{index}",
            tuple(map(str, class_names[name])) if name in class_names else None,
        )
        for index, name in enumerate(labels)
    )
    return LabelSpec("columns", columns)


# ---------------------------------------------------------------------- every batch


def batch_rows(
    features: Features, batch: Batch, layout: Layout, positions: range
) -> dict[str, Tensor]:
    """The rows of every array (but ``sample_ids``) for one batch, after checking the batch.

    Raises:
        StoreMismatchError: If the images have another size than the store's.
        ValueError: If the labels differ from the first batch's (columns, kind of values, class
            range), or if features are NaN or inf.
    """
    where = f"samples {positions.start}..{positions.stop - 1}"
    size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
    if layout.input_size is not None and size != layout.input_size:
        raise StoreMismatchError(
            "every image of a store must have one size: {} are {}x{} images but the store "
            "holds {}x{} ones; resize them alike (a preprocessing preset) or extract them into "
            "another store".format(where, *size, *layout.input_size)
        )
    token_dtype = parse_dtype(layout.arrays["class_tokens"].dtype)
    rows = _token_rows(features, layout.keep, token_dtype)
    _check_finite(rows, features, token_dtype, positions)
    rows.update(_label_rows(batch.labels, layout, where))
    return rows


def _token_rows(features: Features, keep: Sequence[str], dtype: torch.dtype) -> dict[str, Tensor]:
    rows = {
        "class_tokens": torch.stack(features.class_tokens, dim=1),  # n x (B, D) -> (B, n, D)
        "patch_mean": features.patch_mean,
    }
    if "patch_tokens" in keep:
        # n x (B, N, D) -> (B, n, N, D)
        rows["patch_tokens"] = torch.stack(features.require_patch_tokens("keep='patch_tokens'"), 1)
    if "register_tokens" in keep:
        if features.register_tokens is None:
            raise ValueError("the store keeps register tokens but the backbone gave none")
        rows["register_tokens"] = features.register_tokens
    return {name: value.detach().to(device="cpu", dtype=dtype) for name, value in rows.items()}


def _label_rows(
    labels: Tensor | dict[str, Tensor] | None, layout: Layout, where: str
) -> dict[str, Tensor]:
    spec = layout.labels
    if spec is None or labels is None:
        if spec is None and labels is None:
            return {}
        had = "no labels" if spec is None else f"labels {list(spec.names)}"
        has = "none" if labels is None else "labels"
        raise ValueError(
            f"the first batch had {had} but {where} have {has}; every item must have the same "
            "labels"
        )
    if spec.kind == "tensor":
        if not isinstance(labels, Tensor):
            raise ValueError(
                f"the first batch had one label tensor but {where} have label columns "
                f"{list(labels)}; every item must have the same labels"
            )
        values = {spec.columns[0].name: labels}
    else:
        if isinstance(labels, Tensor):
            raise ValueError(
                f"the first batch had label columns {list(spec.names)} but {where} have one "
                "label tensor; every item must have the same labels"
            )
        _check_columns(spec, labels, where)
        values = labels
    return {
        column.array: _checked_column(values[column.name], column, layout, where)
        for column in spec.columns
    }


def _check_columns(spec: LabelSpec, labels: dict[str, Tensor], where: str) -> None:
    missing = [name for name in spec.names if name not in labels]
    extra = [name for name in labels if name not in spec.names]
    if missing or extra:
        parts = [f"lack {missing}" if missing else "", f"add {extra}" if extra else ""]
        raise ValueError(
            f"the label columns of {where} differ from the first batch's {list(spec.names)}: "
            f"they {' and '.join(p for p in parts if p)}; every item must have the same label "
            "columns (they are stored by name)"
        )


def _checked_column(value: Tensor, column: LabelColumn, layout: Layout, where: str) -> Tensor:
    spec = layout.arrays[column.array]
    if dtype_name(value.dtype) != spec.dtype or tuple(value.shape[1:]) != spec.shape:
        raise ValueError(
            f"label {column.name!r} of {where} holds {dtype_name(value.dtype)} values of shape "
            f"{list(value.shape[1:])} per sample but the first batch had {spec.dtype} of shape "
            f"{list(spec.shape)}; give every item labels of one kind (float labels after int "
            "labels would be cut to ints)"
        )
    if column.class_names is not None and value.ndim == 1 and not value.is_floating_point():
        check_class_labels(value, len(column.class_names), context=f"{column.name!r} of {where}: ")
    return value


def _check_finite(
    rows: Mapping[str, Tensor], features: Features, dtype: torch.dtype, positions: range
) -> None:
    """Refuse NaN or inf tokens: every head trained on the store would inherit them."""
    for name, stored in rows.items():
        finite = torch.isfinite(stored.reshape(stored.shape[0], -1)).all(dim=1)  # (B,)
        if bool(finite.all()):
            continue
        row = int((~finite).nonzero()[0])
        if dtype != torch.float32 and _finite_before_storage(features, name, row):
            cause = (
                f"its values exceed the {dtype_name(dtype)} range of the store; extract with "
                "dtype=torch.float32 (or torch.bfloat16)"
            )
        else:
            cause = (
                "the backbone gave NaN or inf for this image; check the image and its "
                "preprocessing (a NaN pixel, a division by a zero std) and the backbone weights"
            )
        raise ValueError(f"the {name} of sample {positions.start + row} are not finite: {cause}")


def _finite_before_storage(features: Features, name: str, row: int) -> bool:
    values = {
        "class_tokens": list(features.class_tokens),
        "patch_mean": [features.patch_mean],
        "patch_tokens": list(features.patch_tokens or ()),
        "register_tokens": [] if features.register_tokens is None else [features.register_tokens],
    }[name]
    return all(bool(torch.isfinite(value[row]).all()) for value in values)
