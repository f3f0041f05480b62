"""What a checkpoint holds, without building a model: for people and for the command line."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from dinov2_heads.backbone.config import variant_name
from dinov2_heads.checkpoints.errors import CheckpointError, UnknownFormatError
from dinov2_heads.checkpoints.folders import (
    CONFIG_NAME,
    INDEX_SUFFIX,
    find_checkpoint_files,
    read_checkpoint_files,
)
from dinov2_heads.checkpoints.formats import CheckpointFormat
from dinov2_heads.checkpoints.head_files import HeadFileSummary, identify_head_file
from dinov2_heads.checkpoints.loading import CheckpointSource, read_backbone
from dinov2_heads.checkpoints.nonfinite import nonfinite_names
from dinov2_heads.checkpoints.released_depth import identify_released_depth_head
from dinov2_heads.checkpoints.released_linear import identify_released_linear_head
from dinov2_heads.checkpoints.saved_heads import saved_heads_metadata
from dinov2_heads.checkpoints.unwrap import unwrap_quietly

_SHOWN = 8


@dataclass(frozen=True)
class CheckpointSummary:
    """A description of a backbone checkpoint. ``str(summary)`` is a short readable table.

    Attributes:
        source: The path, or ``"<state dict>"`` for an in-memory mapping.
        format: The layout: ``"official"``, ``"huggingface"`` or ``"timm"``.
        variant: The official variant name, or ``None`` for a custom architecture.
        config: The inferred :class:`~dinov2_heads.backbone.BackboneConfig` as plain data.
        num_parameters: Elements in the backbone tensors (``mask_token`` included).
        num_tensors: Backbone tensors.
        dtypes: Tensor count per dtype, e.g. ``{"float16": 175}``.
        unwrapped: Containers and prefixes removed, step by step.
        set_aside: Names stored next to the backbone and not part of it (projection heads).
        unexpected: Names that are neither backbone nor a known head.
        nonfinite: Backbone tensors that contain NaN or infinity.
        files: The files read, relative to a folder ``source`` (index, weights or shards,
            ``config.json``); empty for an in-memory mapping.
    """

    source: str
    format: CheckpointFormat
    variant: str | None
    config: dict[str, Any]
    num_parameters: int
    num_tensors: int
    dtypes: dict[str, int]
    unwrapped: tuple[str, ...]
    set_aside: tuple[str, ...]
    unexpected: tuple[str, ...]
    nonfinite: tuple[str, ...]
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "source": self.source,
            "format": self.format,
            "variant": self.variant,
            "config": dict(self.config),
            "num_parameters": self.num_parameters,
            "num_tensors": self.num_tensors,
            "dtypes": dict(self.dtypes),
            "unwrapped": list(self.unwrapped),
            "set_aside": list(self.set_aside),
            "unexpected": list(self.unexpected),
            "nonfinite": list(self.nonfinite),
            "files": list(self.files),
        }

    def __str__(self) -> str:
        c = self.config
        rows = [("checkpoint", self.source)]
        if self.files and self.files != (PurePath(self.source).name,):
            rows.append(("files", _files(self.files)))
        rows += [
            ("format", self.format),
            ("variant", self.variant or "custom"),
            (
                "architecture",
                f"D={c['embed_dim']}, depth={c['depth']}, heads={c['num_heads']}, "
                f"{c['ffn_layer']} FFN, {c['num_register_tokens']} registers",
            ),
            (
                "position grid",
                f"{c['img_size'] // c['patch_size']}x"
                f"{c['img_size'] // c['patch_size']} (img_size {c['img_size']}, "
                f"patch {c['patch_size']})",
            ),
            ("parameters", f"{self.num_parameters:,} in {self.num_tensors} tensors"),
            ("dtype", ", ".join(f"{k} ({v})" for k, v in self.dtypes.items())),
            ("unwrapped", "; ".join(self.unwrapped) or "nothing"),
            ("set aside", _names(self.set_aside)),
            ("unexpected", _names(self.unexpected)),
        ]
        if self.nonfinite:
            rows.append(("NaN/inf in", _names(self.nonfinite)))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def describe_checkpoint(
    source: CheckpointSource, *, num_heads: int | None = None
) -> CheckpointSummary | HeadFileSummary:
    """Read a backbone checkpoint and say what it is, without building the model.

    A released DINOv2 head file is described instead, by the recognisers that name it when it
    is given as a backbone: an ImageNet linear head (``*_linear_head.pth``,
    ``*_linear4_head.pth``), a segmentation head (``*_ade20k_linear_head.pth``, ...) or a depth
    head (``*_nyu_linear4_head.pth``, ``*_kitti_dpt_head.pth``, ...). A
    :class:`HeadFileSummary` gives its type, width, blocks, classes or depth bins and range, and
    the call that loads it. A heads file written by ``save_heads`` is still refused, naming it
    (``dinov2_heads.export.describe_heads`` describes those).

    Args:
        source: A checkpoint path (a file, a model folder, a shard index or a Hugging Face cache
            repo), or a state dict / container around one.
        num_heads: The head count, when the heads are not 64 wide (the weights cannot tell);
            a model folder's ``config.json`` gives it otherwise.

    Returns:
        The summary; ``print(summary)`` shows it as a table, ``summary.to_dict()`` as data.

    Raises:
        ArchitectureMismatchError: A model folder's ``config.json`` contradicts the weights.
        CheckpointError: The checkpoint cannot be read or is neither a DINOv2 backbone nor a
            released head file.
        CheckpointFileError: The file cannot be opened.
    """
    try:
        weights = read_backbone(source)
    except UnknownFormatError:
        head = _head_file(source)
        if head is None:
            raise
        return head
    config = weights.infer_config(num_heads=num_heads)
    files = weights.files
    tensors = weights.state_dict.values()
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in tensors)
    nonfinite = tuple(nonfinite_names(weights.state_dict))
    return CheckpointSummary(
        source=os.fspath(source) if not isinstance(source, Mapping) else "<state dict>",
        format=weights.format,
        variant=variant_name(config),
        config=config.to_dict(),
        num_parameters=sum(t.numel() for t in tensors),
        num_tensors=len(weights.state_dict),
        dtypes=dict(dtypes.most_common()),
        unwrapped=weights.unwrapped,
        set_aside=tuple(weights.set_aside),
        unexpected=tuple(weights.unexpected),
        nonfinite=nonfinite,
        files=files.names() if files is not None else (),
    )


def _head_file(source: CheckpointSource) -> HeadFileSummary | None:
    """The released head file that ``source`` holds, described; ``None`` for anything else."""
    if isinstance(source, Mapping):
        content: Mapping[str, Any] = source
        name = "<state dict>"
        single = None
    else:
        files = find_checkpoint_files(source)
        content = read_checkpoint_files(files)
        name = os.fspath(source)
        single = files.weights[0] if len(files.weights) == 1 else None
    if saved_heads_metadata(content, single) is not None:
        return None  # a heads file keeps the error that sends it to load_heads
    linear = identify_released_linear_head(content)
    if linear is not None:
        return linear.summary(content, name)
    # read_backbone has just logged the unwrapping steps (the containers, the same here).
    try:
        state_dict = unwrap_quietly(content, backbone=False).state_dict
    except CheckpointError:
        return None  # the backbone reading's error says more
    segmentation = identify_head_file(state_dict, name)
    if segmentation is not None:
        return segmentation
    depth = identify_released_depth_head(state_dict, name)
    return depth.summary(state_dict, name) if depth is not None else None


def _files(files: tuple[str, ...]) -> str:
    """``model.safetensors.index.json (9 shards), config.json`` rather than eleven names."""
    index = [name for name in files if name.endswith(INDEX_SUFFIX)]
    config = [name for name in files if PurePath(name).name == CONFIG_NAME]
    weights = [name for name in files if name not in index and name not in config]
    shown = [f"{index[0]} ({len(weights)} shards)"] if index else weights
    return ", ".join(shown + config)


def _names(names: tuple[str, ...]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOWN])
    return f"{len(names)}: {shown}{', ...' if len(names) > _SHOWN else ''}"
