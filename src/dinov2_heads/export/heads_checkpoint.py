"""Head checkpoints for deployment: weights, class names, backbone identity and input size.

One file holds everything: a ``.safetensors`` file with the metadata as JSON in its header, or
a ``.pt`` file (a dict of a JSON string and tensors) that loads with ``weights_only=True``.
Files are replaced atomically, so an interrupted save never damages the previous checkpoint.
They are read through the checkpoint reader
(:func:`~dinov2_heads.checkpoints.read_checkpoint_file`): nothing is unpickled beyond tensors and
strings.

Each head is described by its registry name and ``config()``
(:mod:`dinov2_heads.heads.registry`), so a new head type needs no change here. Format
versions: 1 (0.1.0.dev0) stored constructor arguments as ``"args"`` without class names; 2
stores ``"config"``. Both are read.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.checkpoints.errors import CheckpointError
from dinov2_heads.checkpoints.reading import existing_file, read_checkpoint_file, sniff_file_kind
from dinov2_heads.checkpoints.released_linear import identify_released_linear_head
from dinov2_heads.checkpoints.saved_heads import HEADS_FORMAT, HEADS_METADATA_KEY
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.heads import (
    HEAD_TYPES,
    MultiHead,
    build_head,
    head_spec,
    registered_type_name,
)

logger = logging.getLogger(__name__)

#: The ``format`` field of every head checkpoint, and its version.
FORMAT = HEADS_FORMAT
FORMAT_VERSION = 2
#: The metadata key inside a safetensors header.
SAFETENSORS_KEY = HEADS_METADATA_KEY
#: The name a single head (not a :class:`MultiHead`) has in the metadata.
SINGLE_HEAD = "head"

_SAFETENSORS_SUFFIXES = (".safetensors",)
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_EDITED = "the file was edited or damaged: save the heads again with save_heads"


@dataclass(frozen=True, eq=False)
class HeadCheckpoint:
    """What :func:`load_heads` returns.

    Attributes:
        heads: The rebuilt heads with their weights and class names (a :class:`MultiHead` or a
            single head, in eval mode), or ``None`` when a head type is not one this library
            builds; then call :meth:`load_into` on your own module.
        state_dict: The saved head weights (on CPU unless ``device`` was given).
        head_names: The heads' names in order (``("head",)`` for a single head).
        class_names: Each head's class names, or ``None`` for a head without names.
        backbone_variant: The official name of the backbone the heads were trained on, or
            ``None`` (custom architecture or not recorded).
        backbone_fingerprint: :func:`~dinov2_heads.fingerprint.weights_fingerprint` of its weights.
        backbone_config: Its :class:`~dinov2_heads.backbone.BackboneConfig` as a dict.
        n_last_blocks: How many blocks the frozen backbone returned.
        input_size: The training input size (H, W), or ``None``.
        backbone_dtype: The dtype the backbone's weights were stored in when the heads were
            saved (``"bfloat16"`` for ``FrozenBackbone(dtype=torch.bfloat16)``), or ``None``.
        extra: The user's own metadata given to :func:`save_heads`.
        metadata: The whole stored metadata, in the current layout (the ``args`` of a format
            version 1 file read as ``config``).
        path: The file read.
    """

    heads: nn.Module | None
    state_dict: dict[str, Tensor]
    head_names: tuple[str, ...]
    class_names: dict[str, tuple[str, ...] | None]
    backbone_variant: str | None
    backbone_fingerprint: str | None
    backbone_config: dict[str, Any] | None
    n_last_blocks: int | None
    input_size: tuple[int, int] | None
    backbone_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def load_into(self, module: nn.Module, *, strict: bool = True) -> nn.Module:
        """Load the saved weights into ``module`` (your own head classes) and return it."""
        module.load_state_dict(self.state_dict, strict=strict)
        return module

    def check_backbone(self, backbone: nn.Module, *, fingerprint: bool = True) -> None:
        """Raise ``ValueError`` unless ``backbone`` is the one the heads were trained on.

        Compares the variant name and, when ``fingerprint`` is true and one was saved, the
        weights fingerprint (hashes every weight: about a second per GB). Heads trained on
        weights stored in bfloat16 or float16 accept the float32 checkpoint they came from:
        its weights are cast to the recorded dtype before hashing.
        """
        variant, _ = _backbone_identity(backbone)
        if self.backbone_variant is not None and variant != self.backbone_variant:
            raise ValueError(
                f"these heads were trained on {self.backbone_variant} but the backbone is "
                f"{variant or 'a custom architecture'}; load the matching backbone weights"
            )
        if fingerprint and self.backbone_fingerprint is not None:
            # The fingerprint covers the dtype: weights held in another dtype than the recorded
            # one are hashed as cast to it (as FrozenBackbone(dtype=...) casts), not as they are.
            cast_to = _stored_dtype(self.backbone_dtype)
            if cast_to is not None and cast_to != _dtype_of(backbone):
                found = weights_fingerprint(_cast_floating(backbone.state_dict(), cast_to))
                if found == self.backbone_fingerprint:
                    logger.info(
                        "the heads were trained on these backbone weights stored in %s",
                        self.backbone_dtype,
                    )
            else:
                found = weights_fingerprint(backbone)
            if found != self.backbone_fingerprint:
                raise ValueError(
                    f"these heads were trained on backbone weights with fingerprint "
                    f"{self.backbone_fingerprint[:12]}... but this backbone's weights have "
                    f"{found[:12]}...; load the same checkpoint (and dtype) the heads were "
                    "trained with"
                )


def save_heads(
    path: str | os.PathLike[str],
    heads: nn.Module,
    *,
    backbone: nn.Module | None = None,
    input_size: int | tuple[int, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    backbone_fingerprint: str | None = None,
) -> Path:
    """Save heads for deployment in one file, atomically.

    The format follows the suffix: ``.safetensors`` (the ``safetensors`` package; metadata
    as JSON in the header) or ``.pt`` / ``.pth`` (``torch.save`` of plain containers, loadable
    with ``weights_only=True``). The file is written to a temporary file in the same directory,
    fsynced and renamed over ``path``, so readers always see a complete checkpoint.

    Args:
        path: Where to write; the directory must exist.
        heads: A :class:`~dinov2_heads.heads.MultiHead` or one head. Each head of a type in
            :data:`~dinov2_heads.heads.HEAD_TYPES` is stored with its ``config()`` (class names
            included), so :func:`load_heads` rebuilds it; other heads are stored by weights only.
        backbone: The :class:`~dinov2_heads.features.FrozenBackbone` (or bare backbone) the
            heads were trained on: its variant, configuration, block count and weights
            fingerprint are recorded so that a deployment can check it has the right one.
        input_size: The training input size, ``224`` or ``(126, 252)`` (H, W).
        extra: Any JSON-serialisable metadata of your own (dataset, metrics, ...).
        backbone_fingerprint: The backbone's
            :func:`~dinov2_heads.fingerprint.weights_fingerprint`, when already known:
            hashing a large backbone takes seconds, so a training loop that saves every epoch
            computes it once and passes it here.

    Returns:
        The path written.
    """
    target = Path(path)
    if not isinstance(heads, nn.Module):
        raise TypeError(f"heads must be an nn.Module (a head or a MultiHead), got {heads!r}")
    kind = _format_of(target)
    size = _input_size(input_size, backbone)
    state = {
        name: value.detach().to("cpu", copy=True).contiguous()
        for name, value in heads.state_dict().items()
    }
    metadata = _metadata(heads, state, backbone, backbone_fingerprint, size, extra)
    try:
        text = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"extra metadata must be JSON-serialisable: {error}") from error
    data = _encode_safetensors(state, text) if kind == "safetensors" else _encode_torch(state, text)
    atomic_write_bytes(target, data)
    logger.info("saved %d head(s) to %s", len(metadata["heads"]), target)
    return target


def load_heads(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> HeadCheckpoint:
    """Read a file written by :func:`save_heads` and rebuild the heads.

    Files of every format version are read, those of 0.1.0.dev0 included.

    Args:
        path: A ``.safetensors`` or ``.pt`` head checkpoint (the content decides, not the
            suffix).
        device: Where to put the weights (CPU by default).

    Returns:
        A :class:`HeadCheckpoint`; its ``heads`` are ready to use, in eval mode.

    Raises:
        CheckpointNotFoundError: Nothing is at ``path`` (a ``FileNotFoundError``).
        CheckpointError: The file is not a head checkpoint, needs unpickling, or was damaged
            or edited (a ``ValueError``).
    """
    source, state, text = _read_head_file(path)
    metadata = _parse_metadata(text, source)
    if weights_fingerprint(state) != metadata["heads_fingerprint"]:
        raise CheckpointError(
            f"{source}: the head weights do not match the fingerprint stored with them; the "
            "file is damaged or was edited"
        )
    if device is not None:
        state = {name: value.to(device) for name, value in state.items()}
    specs: dict[str, dict[str, Any]] = metadata["heads"]
    heads = _rebuild_checked(specs, metadata["multi_head"], state, source)
    if heads is not None:
        heads.to(device or "cpu").eval()
    backbone = metadata.get("backbone") or {}
    size = metadata.get("input_size")
    return HeadCheckpoint(
        heads=heads,
        state_dict=state,
        head_names=tuple(specs),
        class_names={
            name: tuple(spec["class_names"]) if spec.get("class_names") is not None else None
            for name, spec in specs.items()
        },
        backbone_variant=backbone.get("variant"),
        backbone_fingerprint=backbone.get("fingerprint"),
        backbone_config=backbone.get("config"),
        n_last_blocks=backbone.get("n_last_blocks"),
        input_size=(int(size[0]), int(size[1])) if size is not None else None,
        backbone_dtype=backbone.get("dtype"),
        extra=dict(metadata.get("extra") or {}),
        metadata=metadata,
        path=source,
    )


def head_specs(heads: nn.Module) -> dict[str, dict[str, Any]]:
    """How each head is described in a head file or ONNX metadata, by name, JSON-able.

    ``{name: {"type", "config", "num_classes", "class_names"}}``: the registry name and
    ``config()`` of a registered head; the qualified class name and ``None`` for another.
    A single head (not a :class:`~dinov2_heads.heads.MultiHead`) is named ``"head"``.
    """
    if isinstance(heads, MultiHead):
        return {name: _head_spec(head) for name, head in heads.items()}
    return {SINGLE_HEAD: _head_spec(heads)}


def _metadata(
    heads: nn.Module,
    state: Mapping[str, Tensor],
    backbone: nn.Module | None,
    backbone_fingerprint: str | None,
    size: tuple[int, int] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    variant, config = _backbone_identity(backbone) if backbone is not None else (None, None)
    if backbone_fingerprint is None and backbone is not None:
        backbone_fingerprint = weights_fingerprint(backbone)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "multi_head": isinstance(heads, MultiHead),
        "heads": head_specs(heads),
        "heads_fingerprint": weights_fingerprint(dict(state)),
        "backbone": {
            "variant": variant,
            "fingerprint": backbone_fingerprint,
            "config": config,
            "n_last_blocks": getattr(backbone, "n_last_blocks", None),
            "dtype": _dtype_name(_dtype_of(backbone)) if backbone is not None else None,
        },
        "input_size": list(size) if size is not None else None,
        "extra": dict(extra or {}),
    }


# ---------------------------------------------------------------------------- backbone dtype

_FLOATING = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_of(backbone: nn.Module) -> torch.dtype | None:
    """The dtype of the backbone's floating-point weights (the first one found)."""
    for value in backbone.state_dict().values():
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype
    return None


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _stored_dtype(name: str | None) -> torch.dtype | None:
    return _FLOATING.get(name) if isinstance(name, str) else None


def _cast_floating(state: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    # FrozenBackbone(dtype=...) casts exactly this way, so the hashes agree.
    return {
        name: value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value
        for name, value in state.items()
    }


# ---------------------------------------------------------------------------- heads


def _head_spec(head: nn.Module) -> dict[str, Any]:
    # A head outside the registry is stored by its weights alone: load_into rebuilds it.
    described = (
        head_spec(head)
        if registered_type_name(head) is not None
        else {"type": f"{type(head).__module__}.{type(head).__qualname__}", "config": None}
    )
    names = getattr(head, "class_names", None)
    return described | {
        "num_classes": getattr(head, "num_classes", None),
        "class_names": list(names) if names is not None else None,
    }


def _rebuild(specs: Mapping[str, Mapping[str, Any]], multi_head: bool) -> nn.Module | None:
    for name, spec in specs.items():
        if spec["config"] is None or spec["type"] not in HEAD_TYPES:
            logger.info(
                "head %r is a %s, which load_heads cannot rebuild (not in HEAD_TYPES); use "
                "checkpoint.load_into(your_module)",
                name,
                spec["type"],
            )
            return None
    if multi_head:
        described = {
            name: {"type": spec["type"], "config": spec["config"]} for name, spec in specs.items()
        }
        return MultiHead.from_config({"heads": described})
    (spec,) = specs.values()
    return build_head(spec["type"], spec["config"])


def _rebuild_checked(
    specs: Mapping[str, Mapping[str, Any]],
    multi_head: bool,
    state: dict[str, Tensor],
    source: Path,
) -> nn.Module | None:
    # The fingerprint covers the weights only, so a hand-edited description (arguments, class
    # names) must be caught here, where it meets the weights.
    try:
        heads = _rebuild(specs, multi_head)
        if heads is not None:
            heads.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{source}: the stored head descriptions do not fit the stored weights "
            f"({type(error).__name__}: {detail}); {_EDITED}"
        ) from error
    if heads is None:
        return None
    for name, spec in specs.items():
        head = heads[name] if isinstance(heads, MultiHead) else heads
        described = spec.get("class_names")
        carried = getattr(head, "class_names", None)
        if (tuple(described) if described is not None else None) != carried:
            raise CheckpointError(
                f"{source}: the metadata gives head {name!r} the class names {described} but "
                f"its weights carry {list(carried) if carried is not None else None}; {_EDITED}"
            )
    return heads


# ---------------------------------------------------------------------------- backbone


def _backbone_identity(backbone: nn.Module) -> tuple[str | None, dict[str, Any] | None]:
    inner = backbone.backbone if isinstance(backbone, FrozenBackbone) else backbone
    if isinstance(inner, DinoVisionTransformer):
        return inner.variant, inner.config.to_dict()
    if not isinstance(inner, nn.Module):
        raise TypeError(
            f"backbone must be a FrozenBackbone or a DinoVisionTransformer, got {backbone!r}"
        )
    return None, None


def _input_size(
    input_size: int | tuple[int, int] | None, backbone: nn.Module | None
) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise TypeError(f"input_size must be an int or (H, W) ints, got {input_size!r}")
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    patch = getattr(backbone, "patch_size", None)
    if isinstance(patch, int) and (height % patch or width % patch):
        raise ValueError(
            f"input_size {height}x{width} is not a multiple of the backbone's patch size {patch}"
        )
    return height, width


# ---------------------------------------------------------------------------- file formats


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    raise ValueError(
        f"cannot tell the checkpoint format from {path.name!r}; use a .safetensors or .pt suffix"
    )


def _encode_torch(state: dict[str, Tensor], metadata: str) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "metadata": metadata, "state_dict": state}, buffer)
    return buffer.getvalue()


def _encode_safetensors(state: dict[str, Tensor], metadata: str) -> bytes:
    save = _safetensors().save
    data: bytes = save(state, metadata={SAFETENSORS_KEY: metadata})
    return data


def _released_linear_hint(content: Any) -> str:
    """How to load ``content`` when it is a released DINOv2 ImageNet linear head, else ``""``."""
    linear = identify_released_linear_head(content)
    if linear is None:
        return ""
    return (
        f"; it holds {linear.contents()}: load it with {linear.recipe()}, then write a heads "
        "file with save_heads (docs/migrating.md)"
    )


def _read_head_file(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Tensor], str]:
    """The file's head weights (owned, on CPU) and its metadata text, through the reader."""
    source = existing_file(path)
    content = read_checkpoint_file(source)
    tensors: Any = content
    if sniff_file_kind(source) == "safetensors":
        text: Any = _safetensors_metadata(source)
    elif content.get("format") != FORMAT:
        raise CheckpointError(
            f"{source} is a torch file but not a head checkpoint written by save_heads "
            f"(no format {FORMAT!r}){_released_linear_hint(content)}"
        )
    else:
        tensors, text = content.get("state_dict"), content.get("metadata")
    if not isinstance(tensors, Mapping) or not isinstance(text, str):
        raise CheckpointError(f"{source}: the state_dict or metadata entry is missing; {_EDITED}")
    if not all(isinstance(value, Tensor) for value in tensors.values()):
        raise CheckpointError(
            f"{source}: the state_dict holds other things than tensors; {_EDITED}"
        )
    # The reader may map the file into memory; heads are small, so they get their own copy and
    # a later rewrite of the file cannot change them.
    return source, {name: value.clone() for name, value in tensors.items()}, text


def _safetensors_metadata(path: Path) -> str:
    safe_open = _safetensors().safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            header = file.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path} could not be read as a safetensors file: {error}") from error
    if SAFETENSORS_KEY not in header:
        raise CheckpointError(
            f"{path} is a safetensors file but not a head checkpoint written by save_heads "
            f"(no {SAFETENSORS_KEY!r} metadata)"
        )
    return str(header[SAFETENSORS_KEY])


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "safetensors head checkpoints need safetensors, a dependency of dinov2-heads that "
            "is missing here: pip install safetensors (or save to a .pt file)"
        ) from error
    return safetensors.torch


def _parse_metadata(text: str, source: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise CheckpointError(
            f"{source}: the stored metadata is not valid JSON: {error}"
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a head checkpoint written by save_heads")
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has head checkpoint format version {version}, newer than this library "
            f"reads ({FORMAT_VERSION}); upgrade dinov2-heads"
        )
    problem = _layout_problem(metadata, version)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}; {_EDITED}")
    if version == 1:
        metadata = _upgrade_version_1(metadata)
    return metadata


def _upgrade_version_1(metadata: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (0.1.0.dev0) kept constructor arguments as ``args``, without class names.

    They are the same keys as ``config`` less ``class_names``, which the weights carry.
    """
    heads = {
        name: {key: value for key, value in spec.items() if key != "args"}
        | {"config": spec.get("args")}
        for name, spec in metadata["heads"].items()
    }
    return metadata | {"heads": heads}


def _layout_problem(metadata: Mapping[str, Any], version: int) -> str | None:
    """What is wrong with the shape of the stored metadata, or ``None``."""
    if not isinstance(metadata.get("heads_fingerprint"), str):
        return "the metadata has no heads_fingerprint string"
    heads = metadata.get("heads")
    if not isinstance(heads, dict) or not heads:
        return f"the metadata's heads must be a non-empty mapping, got {type(heads).__name__}"
    config_key = "args" if version == 1 else "config"
    for name, spec in heads.items():
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("type"), str)
            or not isinstance(spec.get("class_names"), list | None)
            or not isinstance(spec.get(config_key), dict | None)
        ):
            return f"the description of head {name!r} is not one save_heads writes"
    multi = metadata.get("multi_head")
    if not isinstance(multi, bool) or (not multi and list(heads) != [SINGLE_HEAD]):
        return f"multi_head is {multi!r} but the heads are named {list(heads)}"
    size = metadata.get("input_size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return f"input_size must be [H, W] or null, got {size!r}"
    for key in ("backbone", "extra"):
        if not isinstance(metadata.get(key), dict | None):
            return f"{key} must be a mapping or null, got {metadata.get(key)!r}"
    return None
