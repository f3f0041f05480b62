"""Turning what a checkpoint file holds into a flat ``{name: tensor}`` state dict.

Training code wraps weights in containers (``{"model": ...}``, ``{"teacher": ...}``), prefixes
(``module.`` from DistributedDataParallel, ``_orig_mod.`` from ``torch.compile``, ``backbone.``
next to projection heads) and, in DINOv2 training, chunked block lists. Each step here is explicit
and recorded, so the user can see exactly what was taken from the file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dinov2_heads.checkpoints.errors import CheckpointError

logger = logging.getLogger(__name__)

#: Container keys, most preferred first. DINOv2 evaluates the teacher, so it wins over the
#: student when a training checkpoint holds both.
CONTAINER_KEYS = ("teacher", "model", "state_dict", "model_state_dict", "module", "student")

#: Prefixes left by wrappers (DistributedDataParallel, torch.compile); stripped when every key
#: carries one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: Prefixes that select the backbone among other parts, most preferred first. Keys without the
#: chosen prefix (projection heads, a classifier, the other network) are set aside.
BACKBONE_PREFIXES = ("teacher.", "student.", "backbone.", "dinov2.")

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Unwrapped:
    """A flat state dict and how it was taken out of the file.

    Attributes:
        state_dict: Names to tensors, in the order stored.
        steps: What was unwrapped, in order, as readable sentences.
        set_aside: Tensors found next to the weights but not part of them (for example the DINO
            and iBOT projection heads of a training checkpoint), under their names in the file.
    """

    state_dict: dict[str, Tensor]
    steps: tuple[str, ...] = ()
    set_aside: dict[str, Tensor] = field(default_factory=dict)


def unwrap_state_dict(content: Mapping[str, Any], *, backbone: bool = True) -> Unwrapped:
    """Take the state dict out of what a checkpoint file holds.

    Args:
        content: The mapping read from a file, or a state dict.
        backbone: Also select the backbone among other parts (``teacher.``/``student.``,
            ``backbone.``, ``dinov2.`` prefixes, the rest set aside) and flatten DINOv2's chunked
            blocks (``blocks.{chunk}.{i}.*`` -> ``blocks.{i}.*``). Without it only containers and
            wrapper prefixes (``module.``, ``_orig_mod.``) are removed, which suits copying
            weights between arbitrary modules.

    Returns:
        The state dict, the steps taken and what was set aside.

    Raises:
        CheckpointError: No state dict could be found, a name is not a string, or a value is not
            a tensor.
    """
    unwrapped = unwrap_quietly(content, backbone=backbone)
    for step in unwrapped.steps:
        logger.info("unwrapped: %s", step)
    return unwrapped


def unwrap_quietly(content: Mapping[str, Any], *, backbone: bool = True) -> Unwrapped:
    """:func:`unwrap_state_dict` without its INFO line per step: for a second look at content
    whose steps were logged already (``describe_checkpoint`` tries a file as a backbone first,
    then as a released head file)."""
    steps: list[str] = []
    flat = _descend_containers(content, steps)
    set_aside: dict[str, Tensor] = {}
    changed = True
    while changed:
        changed = False
        stripped = _strip_wrapper_prefix(flat, steps)
        if stripped is not None:
            flat, changed = stripped, True
            continue
        if backbone:
            selected = _select_backbone(flat, steps, set_aside)
            if selected is not None:
                flat, changed = selected, True
    if backbone:
        flat = _flatten_chunks(flat, steps)
    if not flat:
        raise CheckpointError("the checkpoint holds no tensors after unwrapping")
    return Unwrapped(flat, tuple(steps), set_aside)


def _descend_containers(content: Mapping[str, Any], steps: list[str]) -> dict[str, Tensor]:
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"expected a state dict (a mapping from names to tensors), got {type(content).__name__}"
        )
    current: Mapping[Any, Any] = content
    for _ in range(8):
        if current and all(isinstance(v, Tensor) for v in current.values()):
            return _checked(current)
        inner = next((key for key in CONTAINER_KEYS if isinstance(current.get(key), Mapping)), None)
        if inner is None:
            return _checked(current)
        others = sorted(str(k) for k in current if k != inner)
        also = f" (also held: {', '.join(others[:6])}{', ...' if len(others) > 6 else ''})"
        steps.append(f"took {inner!r} out of its container{also if others else ''}")
        current = current[inner]
    raise CheckpointError("the checkpoint nests containers more than 8 levels deep")


def _checked(mapping: Mapping[Any, Any]) -> dict[str, Tensor]:
    if not mapping:
        raise CheckpointError("the checkpoint holds an empty state dict")
    bad_names = [k for k in mapping if not isinstance(k, str)]
    if bad_names:
        raise CheckpointError(
            f"state dict names must be strings, got {bad_names[:3]!r}; this is not a state dict"
        )
    bad_values = [(k, type(v).__name__) for k, v in mapping.items() if not isinstance(v, Tensor)]
    if bad_values:
        shown = ", ".join(f"{k!r} ({kind})" for k, kind in bad_values[:5])
        raise CheckpointError(
            f"{len(bad_values)} value(s) in the state dict are not tensors: {shown}; a state "
            "dict maps parameter names to tensors (save model.state_dict())"
        )
    return dict(mapping)


def _strip_wrapper_prefix(flat: dict[str, Tensor], steps: list[str]) -> dict[str, Tensor] | None:
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in flat):
            steps.append(f"stripped the prefix {prefix!r} from every name")
            return {key.removeprefix(prefix): value for key, value in flat.items()}
    return None


def _select_backbone(
    flat: dict[str, Tensor], steps: list[str], set_aside: dict[str, Tensor]
) -> dict[str, Tensor] | None:
    for prefix in BACKBONE_PREFIXES:
        kept = {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}
        if not kept:
            continue
        rest = {k: v for k, v in flat.items() if not k.startswith(prefix)}
        step = f"kept the {len(kept)} tensors under {prefix!r}"
        if rest:
            groups = sorted({k.split(".", 1)[0] for k in rest})
            step += f", set aside {len(rest)} others ({', '.join(groups[:6])})"
            set_aside.update(rest)
        steps.append(step)
        return kept
    return None


def _flatten_chunks(flat: dict[str, Tensor], steps: list[str]) -> dict[str, Tensor]:
    matches = {key: _CHUNKED_BLOCK.match(key) for key in flat}
    chunked = {key: m for key, m in matches.items() if m}
    if not chunked:
        return flat
    plain_blocks = [k for k in flat if k.startswith("blocks.") and k not in chunked]
    if plain_blocks:
        raise CheckpointError(
            f"the checkpoint mixes chunked block names ({next(iter(chunked))!r}) with plain ones "
            f"({plain_blocks[0]!r}); it is not a DINOv2 backbone state dict"
        )
    out: dict[str, Tensor] = {}
    chunks: set[str] = set()
    for key, value in flat.items():
        found = chunked.get(key)
        if found is None:
            out[key] = value
            continue
        chunk, index, rest = found.groups()
        name = f"blocks.{int(index)}.{rest}"
        if name in out:
            raise CheckpointError(f"block {int(index)} appears in more than one chunk ({key!r})")
        chunks.add(chunk)
        out[name] = value
    steps.append(f"flattened {len(chunks)} block chunks (blocks.{{chunk}}.{{i}} -> blocks.{{i}})")
    return out
