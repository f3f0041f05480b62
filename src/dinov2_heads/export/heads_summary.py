"""What a heads file written by ``save_heads`` holds, without the backbone: for people and for
``dinov2-heads inspect``.

The file is read and checked by :func:`~dinov2_heads.export.load_heads` (a damaged or edited
file is refused with its reason) and each head is rebuilt from its stored type and ``config()``;
what a head reads is what it declares for
:meth:`FrozenBackbone.for_heads <dinov2_heads.features.FrozenBackbone.for_heads>`
(``feature_parts``, ``n_blocks``, ``required_blocks(depth)``) and its task comes from the head
registry, so a new head type needs no line here.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dinov2_heads.cache.layout import format_bytes
from dinov2_heads.checkpoints.reading import sniff_file_kind
from dinov2_heads.export.heads_checkpoint import HeadCheckpoint, load_heads
from dinov2_heads.heads import HEAD_TYPES, MultiHead
from dinov2_heads.training.dense_tasks import DENSE_TASKS

__all__ = [
    "DENSE_COMMANDS",
    "METRIC_KEYS",
    "HeadInput",
    "HeadSummary",
    "HeadsFileSummary",
    "describe_heads",
]

#: The keys of a heads file's ``extra`` under which this library records validation results:
#: ``dinov2-heads train`` (``val_accuracy`` of classifiers, ``val_metrics`` of dense heads) and
#: the demo (``heldout_accuracy``, ``heldout_metrics``).
METRIC_KEYS: tuple[str, ...] = (
    "val_accuracy",
    "val_metrics",
    "heldout_accuracy",
    "heldout_metrics",
)

_SHOWN = 8
_TOKENS = {
    "class_tokens": "class token",
    "patch_mean": "mean patch token",
    "patch_tokens": "patch tokens",
    "register_tokens": "register tokens",
}
#: The command that runs each kind of dense head on images.
DENSE_COMMANDS: dict[str, str] = {"segmentation": "segment", "depth": "depth"}


@dataclass(frozen=True)
class HeadInput:
    """The backbone features a head reads.

    Attributes:
        tokens: The token arrays it reads (``Features`` fields such as ``"class_tokens"``,
            ``"patch_mean"``, ``"patch_tokens"``), for a head that declares them; else ``None``.
        last_blocks: How many of the last blocks' class tokens it reads (``n_blocks``), or
            ``None`` (the last block's).
        blocks: The (block index, final norm applied) pairs a dense head reads, on the backbone
            depth the file records; ``None`` when the head reads none or the depth is not
            recorded.
        description: The same in words.
    """

    tokens: tuple[str, ...] | None
    last_blocks: int | None
    blocks: tuple[tuple[int, bool], ...] | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "tokens": list(self.tokens) if self.tokens is not None else None,
            "last_blocks": self.last_blocks,
            "blocks": [list(block) for block in self.blocks] if self.blocks is not None else None,
            "description": self.description,
        }


@dataclass(frozen=True)
class HeadSummary:
    """One head of a heads file.

    Attributes:
        name: Its name in the file (``"head"`` for a file of one head).
        type: Its registry type name, or the qualified class name of a head outside the registry.
        task: ``"classification"``, ``"segmentation"`` or ``"depth"``; ``None`` for a head
            outside the registry.
        num_classes: K of a classifier or segmentation head, else ``None``.
        class_names: Its class names, or ``None``.
        depth_range: (min, max) in metres of a depth head, else ``None``.
        input: What it reads, or ``None`` for a head outside the registry.
    """

    name: str
    type: str
    task: str | None
    num_classes: int | None
    class_names: tuple[str, ...] | None
    depth_range: tuple[float, float] | None
    input: HeadInput | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "name": self.name,
            "type": self.type,
            "task": self.task,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "depth_range": list(self.depth_range) if self.depth_range is not None else None,
            "input": self.input.to_dict() if self.input is not None else None,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the table."""
        rows = [("type", self.type), ("task", self.task or "unknown (not a registered head)")]
        if self.num_classes is not None:
            names = f": {_shorten(self.class_names)}" if self.class_names else ""
            rows.append(("classes", f"{self.num_classes}{names}"))
        if self.depth_range is not None:
            rows.append(("depth", f"{self.depth_range[0]:g} to {self.depth_range[1]:g} m"))
        described = self.input.description if self.input is not None else None
        rows.append(("input", described or "unknown (the head is not rebuilt)"))
        return rows


@dataclass(frozen=True)
class HeadsFileSummary:
    """A description of a heads file. ``str(summary)`` is a short readable table.

    Attributes:
        source: The path.
        format: ``".pt"`` or ``".safetensors"`` (from the content, not the suffix).
        format_version: The heads file format version.
        size: The file size in bytes.
        heads: Each head, in the file's order.
        multi_head: The file holds a ``MultiHead`` (else one head, named ``"head"``).
        backbone_variant: The official name of the backbone the heads were trained on, or
            ``None`` (custom architecture or not recorded).
        embed_dim: D of that backbone, from its recorded configuration, else from the heads'.
        backbone_depth: Its block count, when its configuration is recorded.
        backbone_fingerprint: Its weights fingerprint (64 hex digits), or ``None``.
        backbone_dtype: The dtype its weights were in, or ``None``.
        n_last_blocks: How many blocks the frozen backbone returned, or ``None``.
        input_size: The training input size (H, W), or ``None``.
        metrics: The validation results recorded with the heads (the :data:`METRIC_KEYS` of
            ``extra``), as stored.
        extra: The whole ``extra`` metadata given to ``save_heads``.
        checkpoint: ``--checkpoint``'s value in :meth:`commands`, quoted for a shell; ``None``
            leaves the placeholder ``BACKBONE`` (a heads file does not say where its backbone
            checkpoint is; the command line finds it through the store it was trained on).
    """

    source: str
    format: str
    format_version: int
    size: int
    heads: tuple[HeadSummary, ...]
    multi_head: bool
    backbone_variant: str | None
    embed_dim: int | None
    backbone_depth: int | None
    backbone_fingerprint: str | None
    backbone_dtype: str | None
    n_last_blocks: int | None
    input_size: tuple[int, int] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def commands(self) -> tuple[str, ...]:
        """The command lines that use the file, ``IMAGES`` (and without :attr:`checkpoint`,
        ``BACKBONE``) left to fill in.

        ``predict`` for the classifiers (``export`` when they are all there is); ``segment`` or
        ``depth`` for each dense head (``--head-name`` where the file holds several of its
        task, ``--size`` at the recorded input size, pictures beside the file), and ``export
        --whole-image`` for a file of one dense head: the lines ``dinov2-heads train`` prints.
        """
        if any(head.input is None for head in self.heads):
            return ()  # a head outside the registry: only your code rebuilds the file
        quoted = shlex.quote(self.source)
        backbone = self.checkpoint or "BACKBONE"
        folder = Path(self.source).parent
        lines = []
        classifiers = [head for head in self.heads if head.task == "classification"]
        dense = [head for head in self.heads if head.task in DENSE_COMMANDS]
        if classifiers:
            lines.append(f"dinov2-heads predict --heads {quoted} --checkpoint {backbone} IMAGES")
        if classifiers and len(classifiers) == len(self.heads):
            onnx_file = shlex.quote(str(Path(self.source).with_suffix(".onnx")))
            lines.append(
                f"dinov2-heads export --heads {quoted} --checkpoint {backbone} --out {onnx_file}"
            )
        size = f" --size {self.input_size[0]} {self.input_size[1]}" if self.input_size else ""
        for head in dense:
            task = str(head.task)
            several = sum(other.task == task for other in dense) > 1
            pick = f" --head-name {shlex.quote(head.name)}" if several else ""
            pictures = shlex.quote(str(folder / (head.name if self.multi_head else task)))
            lines.append(
                f"dinov2-heads {DENSE_COMMANDS[task]} --heads {quoted}{pick} --checkpoint "
                f"{backbone}{size} --out {pictures} IMAGES"
            )
        if len(dense) == 1 == len(self.heads):
            graph = folder / f"{dense[0].name if self.multi_head else dense[0].task}.onnx"
            lines.append(
                f"dinov2-heads export --heads {quoted} --checkpoint {backbone} --whole-image "
                f"--out {shlex.quote(str(graph))}"
            )
        return tuple(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "source": self.source,
            "kind": "heads",
            "format": self.format,
            "format_version": self.format_version,
            "size": self.size,
            "multi_head": self.multi_head,
            "heads": [head.to_dict() for head in self.heads],
            "backbone": {
                "variant": self.backbone_variant,
                "embed_dim": self.embed_dim,
                "depth": self.backbone_depth,
                "fingerprint": self.backbone_fingerprint,
                "dtype": self.backbone_dtype,
                "n_last_blocks": self.n_last_blocks,
            },
            "input_size": list(self.input_size) if self.input_size is not None else None,
            "metrics": dict(self.metrics),
            "extra": dict(self.extra),
            "commands": list(self.commands()),
        }

    def __str__(self) -> str:
        rows = [
            ("heads file", self.source),
            (
                "format",
                f"{self.format} ({format_bytes(self.size)}), "
                f"heads file version {self.format_version}",
            ),
            ("heads", ", ".join(head.name for head in self.heads)),
            ("backbone", self._backbone()),
            ("fingerprint", _short(self.backbone_fingerprint)),
            ("input size", "x".join(map(str, self.input_size)) if self.input_size else "unknown"),
        ]
        made_by = self.extra.get("made_by")
        if isinstance(made_by, str):
            rows.append(("made by", made_by))
        rest = [key for key in self.extra if key not in METRIC_KEYS and key != "made_by"]
        if rest:
            rows.append(("extra", ", ".join(rest)))
        lines = _table(rows)
        for head in self.heads:
            lines += ["", f"head {head.name}" if self.multi_head else "head (the file's one head)"]
            lines += [f"  {line}" for line in _table(head.rows())]
        metrics = [line for key, item in self.metrics.items() for line in _metric_lines(key, item)]
        if metrics:
            lines += ["", "metrics (--json for every value)", *(f"  {line}" for line in metrics)]
        commands = self.commands()
        if commands:
            backbone = (
                ""
                if self.checkpoint
                else "BACKBONE: the backbone checkpoint the heads were trained on; "
            )
            lines += [
                "",
                f"use it ({backbone}IMAGES: image files or folders):",
                *(f"  {line}" for line in commands),
            ]
        else:
            lines += [
                "",
                "use it in Python: load_heads(path).load_into(module), module being your heads "
                "(a head type outside HEAD_TYPES is stored by its weights alone)",
            ]
        return "\n".join(lines)

    def _backbone(self) -> str:
        details = [f"D = {self.embed_dim}"] if self.embed_dim is not None else []
        if self.backbone_depth is not None:
            details.append(f"{self.backbone_depth} block{'s' if self.backbone_depth != 1 else ''}")
        if self.backbone_dtype is not None:
            details.append(self.backbone_dtype)
        name = self.backbone_variant or ("custom" if self.backbone_depth is not None else "unknown")
        return f"{name} ({', '.join(details)})" if details else f"{name} (not recorded)"


def describe_heads(path: str | os.PathLike[str]) -> HeadsFileSummary:
    """Read a heads file written by ``save_heads`` and say what it holds, without the backbone.

    Args:
        path: A ``.pt`` or ``.safetensors`` heads file.

    Returns:
        The summary; ``print(summary)`` shows it as a table, ``summary.to_dict()`` as data.

    Raises:
        CheckpointNotFoundError: Nothing is at ``path``.
        CheckpointError: The file is not a heads file, or was damaged or edited (the message
            says which).
    """
    checkpoint = load_heads(path)
    source = checkpoint.path if checkpoint.path is not None else Path(path)
    metadata = checkpoint.metadata
    config = checkpoint.backbone_config or {}
    depth = config.get("depth") if isinstance(config.get("depth"), int) else None
    members = _members(checkpoint)
    specs: Mapping[str, Mapping[str, Any]] = metadata["heads"]
    extra = checkpoint.extra
    return HeadsFileSummary(
        source=os.fspath(path),
        format=".safetensors" if sniff_file_kind(source) == "safetensors" else ".pt",
        format_version=int(metadata["format_version"]),
        size=source.stat().st_size,
        heads=tuple(
            _head(name, spec, members.get(name), depth, checkpoint.class_names.get(name))
            for name, spec in specs.items()
        ),
        multi_head=bool(metadata["multi_head"]),
        backbone_variant=checkpoint.backbone_variant,
        embed_dim=_embed_dim(config, specs),
        backbone_depth=depth,
        backbone_fingerprint=checkpoint.backbone_fingerprint,
        backbone_dtype=checkpoint.backbone_dtype,
        n_last_blocks=checkpoint.n_last_blocks,
        input_size=checkpoint.input_size,
        metrics={key: extra[key] for key in METRIC_KEYS if key in extra},
        extra=extra,
    )


def _members(checkpoint: HeadCheckpoint) -> dict[str, nn.Module]:
    """The rebuilt heads by name (none when a head type is outside the registry)."""
    heads = checkpoint.heads
    if heads is None:
        return {}
    if isinstance(heads, MultiHead):
        return {name: heads[name] for name in checkpoint.head_names}
    (name,) = checkpoint.head_names
    return {name: heads}


def _head(
    name: str,
    spec: Mapping[str, Any],
    head: nn.Module | None,
    depth: int | None,
    class_names: tuple[str, ...] | None,
) -> HeadSummary:
    type_name = str(spec["type"])
    task = DENSE_TASKS.get(type_name, "classification") if type_name in HEAD_TYPES else None
    classes = spec.get("num_classes")
    return HeadSummary(
        name=name,
        type=type_name,
        task=task,
        num_classes=int(classes) if isinstance(classes, int) and task != "depth" else None,
        class_names=class_names,
        depth_range=_depth_range(head) if task == "depth" else None,
        input=_input(head, depth) if head is not None else None,
    )


def _depth_range(head: nn.Module | None) -> tuple[float, float] | None:
    low, high = getattr(head, "min_depth", None), getattr(head, "max_depth", None)
    if isinstance(low, int | float) and isinstance(high, int | float):
        return float(low), float(high)
    return None


def _input(head: nn.Module, depth: int | None) -> HeadInput:
    """What ``head`` reads, from what it declares (as ``FrozenBackbone.for_heads`` reads it)."""
    declared = getattr(head, "feature_parts", None)
    tokens = tuple(declared) if declared is not None else None
    if tokens is not None and getattr(head, "avgpool", True) is False:
        tokens = tuple(name for name in tokens if name != "patch_mean")  # declared, not read
    n_blocks = getattr(head, "n_blocks", None)
    last = n_blocks if isinstance(n_blocks, int) and not isinstance(n_blocks, bool) else None
    required = getattr(head, "required_blocks", None)
    blocks, misfit = None, False
    if callable(required) and depth is not None:
        try:
            blocks = tuple((int(index), bool(norm)) for index, norm in required(depth))
        except ValueError:
            misfit = True
    parts = []
    if tokens:
        parts.append(_tokens_text(tokens, last))
    if blocks:
        parts.append(_blocks_text(blocks, depth))
    elif misfit:
        parts.append(f"tokens of chosen blocks, which the recorded {depth}-block backbone lacks")
    elif callable(required):
        parts.append("tokens of chosen blocks (the file records no backbone depth to place them)")
    description = "; ".join(parts) or "not declared (the head may read any features)"
    return HeadInput(tokens=tokens, last_blocks=last, blocks=blocks, description=description)


def _blocks_text(blocks: Sequence[tuple[int, bool]], depth: int | None) -> str:
    """``tokens of blocks 2, 5, 8, 11 of 12 (before the final norm)``."""
    norms = {norm for _, norm in blocks}
    how = {
        frozenset({True}): " (final norm applied)",
        frozenset({False}): " (before the final norm)",
    }
    indices = ", ".join(str(index) for index, _ in blocks)
    plural = "s" if len(blocks) > 1 else ""
    return f"tokens of block{plural} {indices} of {depth}{how.get(frozenset(norms), '')}"


def _tokens_text(tokens: Sequence[str], last_blocks: int | None) -> str:
    """``class token and mean patch token of the last block`` and the like."""
    named = [_TOKENS.get(name, name) for name in tokens]
    if last_blocks is not None and last_blocks > 1 and "class_tokens" in tokens:
        rest = [_TOKENS.get(name, name) for name in tokens if name != "class_tokens"]
        text = f"class tokens of the last {last_blocks} blocks"
        return text + (f" and {_and(rest)} of the last block" if rest else "")
    return f"{_and(named)} of the last block"


def _and(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def _embed_dim(config: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]) -> int | None:
    """D from the backbone configuration, else the one D every head was built for."""
    if isinstance(config.get("embed_dim"), int):
        return int(config["embed_dim"])
    widths = {
        spec["config"].get("embed_dim") for spec in specs.values() if spec.get("config") is not None
    }
    if len(widths) != 1:
        return None  # no head records one, or the heads disagree
    width = widths.pop()
    return width if isinstance(width, int) else None


def _metric_lines(key: str, value: Any) -> list[str]:
    """``val_accuracy: colour 0.9312, size 0.875`` and ``val_metrics parts: miou 0.41, ...``."""
    if not isinstance(value, Mapping):
        return [f"{key}: {_number(value)}"]
    scalars = {name: item for name, item in value.items() if not isinstance(item, Mapping | list)}
    lines = [f"{key}: {_pairs(scalars)}"] if scalars else []
    for name, item in value.items():
        if isinstance(item, Mapping):
            inner = {k: v for k, v in item.items() if not isinstance(v, Mapping | list)}
            if inner:
                lines.append(f"{key} {name}: {_pairs(inner)}")
    return lines


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {_number(value)}" for name, value in values.items())


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short(fingerprint: str | None) -> str:
    return f"{fingerprint[:12]}..." if fingerprint else "not recorded"


def _shorten(names: Sequence[str] | None) -> str:
    names = list(names or ())
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]
