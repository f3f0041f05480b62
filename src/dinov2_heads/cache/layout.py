"""What a store keeps per sample: the ``keep`` presets, sizes, and the rows of each batch.

The first batch of an extraction fixes the :class:`~dinov2_heads.cache.manifest.Layout`
(:func:`plan_layout`); every batch, the first included, is then checked against it and turned
into rows (:func:`batch_rows`): same image size, the same label columns by name with the same
kind of values, finite features.

Labels that are pictures of their image are stored compactly (:func:`stored_label`): an
integer (H, W) label is a segmentation mask, stored as uint8 (255 = no label); a float (H, W)
or (1, H, W) label at the image size is a depth map, stored as float16 in a float16 store and
as float32 otherwise. Both come back as the data gave them: int64 masks, float32 depth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from dinov2_heads.cache.batches import Batch
from dinov2_heads.cache.errors import StoreMismatchError
from dinov2_heads.cache.manifest import (
    BLOCK_ARRAY,
    DEFAULT_LABEL,
    TOKEN_ARRAYS,
    ArraySpec,
    BlockKey,
    LabelColumn,
    LabelSpec,
    Layout,
    dtype_name,
    parse_dtype,
)
from dinov2_heads.data.masks import IGNORE_LABEL
from dinov2_heads.features import Features
from dinov2_heads.labels import check_class_labels

logger = logging.getLogger(__name__)

__all__ = [
    "Keep",
    "LabelKind",
    "batch_rows",
    "chosen_blocks",
    "estimate_store_size",
    "format_bytes",
    "map_dtype",
    "plan_layout",
    "stored_blocks",
    "stored_label",
]

#: What each sample's label is, for :func:`estimate_store_size`: a class index (int64), a
#: segmentation mask (uint8, the image size), a depth map (the image size) or no label.
LabelKind = Literal["class", "mask", "depth"] | None

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
    labels: LabelKind = "class",
) -> int:
    """Bytes a store of ``count`` images will take, before extracting anything.

    Counts the token arrays, the chosen blocks of a ``FrozenBackbone(blocks=...)`` (or
    ``FrozenBackbone.for_heads``), int64 sample ids and one label per sample.

    Args:
        frozen: A :class:`~dinov2_heads.features.FrozenBackbone` (its ``embed_dim``,
            ``n_last_blocks``, ``blocks``, ``depth``, ``patch_size`` and
            ``num_register_tokens`` are used).
        input_size: Image size (H, W).
        count: Number of images.
        keep: As for :func:`~dinov2_heads.cache.extract_features`.
        dtype: Storage dtype of the tokens.
        labels: ``"class"`` (one int64 per image), ``"mask"`` (a uint8 mask of the image
            size), ``"depth"`` (a depth map of the image size, stored as :func:`map_dtype`)
            or ``None``.

    Example:
        ViT-S/14 (D = 384) at 224x224 keeps 1.5 KiB per image pooled, 193.5 KiB with patch
        tokens: 1.9 GB per 10,000 images. A segmentation head on the last four blocks
        (``FrozenBackbone.for_heads``) with 224x224 masks: 824 KiB per image.
    """
    names, _ = resolve_keep(keep)
    dim = int(getattr(frozen, "embed_dim"))  # noqa: B009 - documented requirement
    n = int(getattr(frozen, "n_last_blocks", 1))
    patch = int(getattr(frozen, "patch_size", 14))
    registers = int(getattr(frozen, "num_register_tokens", 0) or 0)
    depth = getattr(frozen, "depth", None)
    blocks = stored_blocks(
        chosen_blocks(getattr(frozen, "blocks", ())),
        depth=depth if isinstance(depth, int) else None,
        n_blocks=n,
        keep=names,
    )
    height, width = int(input_size[0]), int(input_size[1])
    num_patches = (height // patch) * (width // patch)
    numel = {
        "class_tokens": n * dim,
        "patch_mean": dim,
        "patch_tokens": n * num_patches * dim,
        "register_tokens": registers * dim,
    }
    tokens = sum(numel[name] for name in names) + len(blocks) * (1 + num_patches) * dim
    label_bytes = {
        "class": 8,
        "mask": height * width,
        "depth": height * width * map_dtype(dtype).itemsize,
        None: 0,
    }
    if labels not in label_bytes:
        raise ValueError(f"labels must be 'class', 'mask', 'depth' or None, got {labels!r}")
    per_sample = tokens * dtype.itemsize + label_bytes[labels] + 8
    return count * per_sample


def map_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype depth maps are stored in, in a store of tokens of ``dtype``.

    float16 (3 significant digits: 5 mm at 10 m) in a float16 store; float32 otherwise, since
    bfloat16 keeps only 2 digits.
    """
    return torch.float16 if dtype == torch.float16 else torch.float32


def chosen_blocks(value: object) -> tuple[BlockKey, ...]:
    """The (absolute index, norm) pairs of a ``FrozenBackbone``'s ``blocks``; () for others."""
    if not isinstance(value, tuple | list):
        return ()
    keys = [
        (entry[0], entry[1])
        for entry in value
        if isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], int)
        and not isinstance(entry[0], bool)
        and isinstance(entry[1], bool)
    ]
    return tuple(sorted(set(keys)))


def stored_blocks(
    chosen: Iterable[BlockKey], *, depth: int | None, n_blocks: int, keep: Sequence[str]
) -> tuple[BlockKey, ...]:
    """The chosen blocks that go into :data:`~dinov2_heads.cache.manifest.BLOCK_ARRAY`.

    Every chosen block but those the ``patch_tokens`` array already holds (the last
    ``n_blocks`` blocks, normed, when patch tokens are kept and the depth is known).
    """
    held: set[BlockKey] = set()
    if "patch_tokens" in keep and depth is not None:
        held = {(index, True) for index in range(depth - n_blocks, depth)}
    return tuple(sorted(key for key in set(chosen) if key not in held))


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
    blocks: Sequence[BlockKey] = (),
) -> Layout:
    """The layout that the first batch (and its features) fixes for the whole store.

    Args:
        class_names: Class names by label name (from the data's ``vocabularies`` or given).
        names_given: ``class_names`` were passed explicitly: refuse names that fit no label.
        blocks: The blocks the backbone was asked for (``FrozenBackbone.blocks``); the
            blocks in ``features.blocks`` are kept too.
    """
    if "register_tokens" in keep and features.register_tokens is None:
        if not registers_optional:
            raise ValueError(
                "keep asks for register tokens but the backbone gives none; use a _reg "
                "variant or leave register_tokens out of keep"
            )
        keep = tuple(name for name in keep if name != "register_tokens")
    kept_blocks = stored_blocks(
        {*features.blocks, *blocks}, depth=features.depth, n_blocks=features.n_blocks, keep=keep
    )
    tokens = _token_rows(features[:1], keep, kept_blocks, dtype)
    arrays = {
        name: ArraySpec(f"{name}.bin", dtype_name(value.dtype), tuple(value.shape[1:]))
        for name, value in tokens.items()
    }
    height, width = (int(side) for side in batch.images.shape[-2:])
    labels = _label_spec(batch.labels, class_names, names_given)
    if labels is not None:
        values = batch.labels if isinstance(batch.labels, dict) else {"": batch.labels}
        for column, value in zip(labels.columns, values.values(), strict=True):
            assert isinstance(value, Tensor)
            where = f"label {column.name!r} of the first batch"
            stored = stored_label(value, (height, width), dtype, where)
            arrays[column.array] = ArraySpec(
                f"{column.array}.bin", dtype_name(stored.dtype), tuple(stored.shape[1:])
            )
    arrays["sample_ids"] = ArraySpec("sample_ids.bin", "int64", ())
    registers = features.register_tokens
    return Layout(
        input_size=(height, width),
        grid=features.grid,
        embed_dim=features.embed_dim,
        n_blocks=features.n_blocks,
        num_register_tokens=(
            int(registers.shape[1]) if registers is not None and "register_tokens" in keep else 0
        ),
        keep=keep,
        labels=labels,
        arrays=arrays,
        depth=features.depth,
        blocks=kept_blocks,
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
    rows = _token_rows(features, layout.keep, layout.blocks, token_dtype)
    _check_finite(rows, features, layout.blocks, token_dtype, positions)
    rows.update(_label_rows(batch.labels, layout, token_dtype, where))
    return rows


def _token_rows(
    features: Features, keep: Sequence[str], blocks: Sequence[BlockKey], dtype: torch.dtype
) -> dict[str, Tensor]:
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
    if blocks:
        # m x [(B, 1, D) class token, (B, N, D) patches] -> (B, m, 1 + N, D)
        rows[BLOCK_ARRAY] = torch.stack(
            [torch.cat([c[:, None], p], dim=1) for c, p in _block_tokens(features, blocks)], dim=1
        )
    return {name: value.detach().to(device="cpu", dtype=dtype) for name, value in rows.items()}


def _block_tokens(features: Features, blocks: Sequence[BlockKey]) -> list[tuple[Tensor, Tensor]]:
    """(class token (B, D), patch tokens (B, N, D)) of each block, or an error naming it."""
    try:
        return [features.block(index, norm=norm) for index, norm in blocks]
    except ValueError as error:
        raise ValueError(
            f"the store keeps blocks {list(blocks)} (index, final norm) but a batch's features "
            f"lack one: {error}"
        ) from None


def stored_label(
    value: Tensor, image_size: tuple[int, int], dtype: torch.dtype, where: str
) -> Tensor:
    """A label column (B, ...) as the store keeps it: masks uint8, depth maps compact.

    An integer label of shape (B, H, W) is a segmentation mask: it must have the image's size
    and hold values 0..255 (255 = no label); it is stored as uint8. A float label of shape
    (B, H, W) or (B, 1, H, W) at the image size is a depth map, stored as
    :func:`map_dtype` of the token ``dtype``. Every other label is stored as given (int64
    or float32).

    Raises:
        ValueError: A mask of another size than its image, mask values outside 0..255, or a
            depth map whose finite values overflow the storage dtype; ``where`` names the label
            and samples.
    """
    per_sample = tuple(value.shape[1:])
    if not value.is_floating_point():
        if len(per_sample) != 2:
            return value
        if per_sample != image_size:
            raise ValueError(
                "{} is a mask (integer (H, W)) of {}x{} but its images are {}x{}; a mask must "
                "have its image's size: resize or crop both together (SegmentationTransform), "
                "or give one class per image as a single number".format(
                    where, *per_sample, *image_size
                )
            )
        if value.numel() and (int(value.min()) < 0 or int(value.max()) > IGNORE_LABEL):
            bad = value[(value < 0) | (value > IGNORE_LABEL)]
            shown = [int(v) for v in torch.unique(bad)[:5].tolist()]
            raise ValueError(
                f"{where} is a mask with values {shown} outside 0..{IGNORE_LABEL}; a store keeps "
                f"masks as uint8 class indices with {IGNORE_LABEL} for pixels without a label: "
                "map the values into that range, or train from the images"
            )
        return value.to(torch.uint8)
    spatial = per_sample[-2:] if len(per_sample) == 2 or per_sample[:1] == (1,) else None
    if len(per_sample) not in (2, 3) or spatial != image_size:
        return value
    target = map_dtype(dtype)
    stored = value.to(target)
    overflow = torch.isfinite(value) & ~torch.isfinite(stored)
    if bool(overflow.any()):
        largest = float(value[overflow].abs().max())
        raise ValueError(
            f"{where} is a depth map with values up to {largest:g}, beyond the "
            f"{dtype_name(target)} range of the store; extract with dtype=torch.float32"
        )
    return stored


def _label_rows(
    labels: Tensor | dict[str, Tensor] | None, layout: Layout, dtype: torch.dtype, where: str
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
        column.array: _checked_column(values[column.name], column, layout, dtype, where)
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


def _checked_column(
    value: Tensor, column: LabelColumn, layout: Layout, dtype: torch.dtype, where: str
) -> Tensor:
    spec = layout.arrays[column.array]
    size = layout.input_size
    stored = (
        stored_label(value, size, dtype, f"label {column.name!r} of {where}")
        if size is not None
        else value
    )
    if dtype_name(stored.dtype) != spec.dtype or tuple(stored.shape[1:]) != spec.shape:
        raise ValueError(
            f"label {column.name!r} of {where} holds {dtype_name(value.dtype)} values of shape "
            f"{list(value.shape[1:])} per sample but the first batch had {spec.dtype} of shape "
            f"{list(spec.shape)}; give every item labels of one kind (float labels after int "
            "labels would be cut to ints)"
        )
    if column.class_names is not None and not value.is_floating_point():
        if value.ndim == 1:
            check_class_labels(
                value, len(column.class_names), context=f"{column.name!r} of {where}: "
            )
        elif stored.dtype == torch.uint8:
            _check_mask_classes(stored, len(column.class_names), f"{column.name!r} of {where}")
    return stored


def _check_mask_classes(masks: Tensor, num_classes: int, where: str) -> None:
    bad = (masks != IGNORE_LABEL) & (masks >= num_classes)
    if bool(bad.any()):
        shown = [int(v) for v in torch.unique(masks[bad])[:5].tolist()]
        raise ValueError(
            f"the masks of {where} hold classes {shown} but the label has {num_classes} class "
            f"names (0..{num_classes - 1}, and {IGNORE_LABEL} for no label); fix the masks or "
            "the class names"
        )


def _check_finite(
    rows: Mapping[str, Tensor],
    features: Features,
    blocks: Sequence[BlockKey],
    dtype: torch.dtype,
    positions: range,
) -> None:
    """Refuse NaN or inf tokens: every head trained on the store would inherit them."""
    for name, stored in rows.items():
        finite = torch.isfinite(stored.reshape(stored.shape[0], -1)).all(dim=1)  # (B,)
        if bool(finite.all()):
            continue
        row = int((~finite).nonzero()[0])
        if dtype != torch.float32 and _finite_before_storage(features, blocks, name, row):
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


def _finite_before_storage(
    features: Features, blocks: Sequence[BlockKey], name: str, row: int
) -> bool:
    values = {
        "class_tokens": list(features.class_tokens),
        "patch_mean": [features.patch_mean],
        "patch_tokens": list(features.patch_tokens or ()),
        "register_tokens": [] if features.register_tokens is None else [features.register_tokens],
        BLOCK_ARRAY: [part for pair in _block_tokens(features, blocks) for part in pair],
    }[name]
    return all(bool(torch.isfinite(value[row]).all()) for value in values)
