"""Copying every matching tensor from a checkpoint into a module, and saying what was skipped."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.checkpoints.errors import CheckpointError, PartialLoadError
from dinov2_heads.checkpoints.fit import ShapeMismatch, compare_state_dicts
from dinov2_heads.checkpoints.folders import read_checkpoint
from dinov2_heads.checkpoints.nonfinite import nonfinite_names
from dinov2_heads.checkpoints.unwrap import unwrap_state_dict

logger = logging.getLogger(__name__)

#: ``rename`` as a mapping: old prefix -> new prefix, or ``None`` to drop names with that prefix.
PrefixMap = Mapping[str, str | None]
#: ``rename`` as a function: checkpoint name -> module name, or ``None`` to drop it.
RenameFn = Callable[[str], str | None]
PartialSource = str | os.PathLike[str] | Mapping[str, Any] | nn.Module

_SHOWN = 8
_EXTRA_STATE = "_extra_state"


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_partial` did. Names are the module's (after ``rename``).

    Attributes:
        loaded: Copied into the module.
        missing: In the module, not in the checkpoint; left as they were.
        unexpected: In the checkpoint, not in the module; ignored.
        mismatched: On both sides with different shapes; left as they were.
        dropped: Checkpoint names that ``rename`` dropped on purpose (original names).
        unwrapped: How the state dict was taken out of its container, step by step.
        nonfinite: Loaded tensors that contain NaN or infinity.
        cast: Loaded tensors whose dtype differed from the module's and were converted.
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]
    dropped: tuple[str, ...] = ()
    unwrapped: tuple[str, ...] = ()
    nonfinite: tuple[str, ...] = ()
    cast: tuple[str, ...] = ()

    @property
    def skipped(self) -> int:
        """How many names were not loaded: missing + unexpected + mismatched."""
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    @property
    def complete(self) -> bool:
        """Whether every module tensor was loaded and every checkpoint tensor was used."""
        return self.skipped == 0

    def summary(self) -> str:
        """One line: the counts."""
        text = (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, mismatched {len(self.mismatched)}"
        )
        if self.dropped:
            text += f", dropped by rename {len(self.dropped)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, strings and ints), e.g. for JSON."""
        return {
            "loaded": list(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [
                {
                    "name": m.name,
                    "checkpoint_shape": list(m.checkpoint_shape),
                    "module_shape": list(m.module_shape),
                }
                for m in self.mismatched
            ],
            "dropped": list(self.dropped),
            "unwrapped": list(self.unwrapped),
            "nonfinite": list(self.nonfinite),
            "cast": list(self.cast),
        }

    def __str__(self) -> str:
        rows = [
            ("mismatched", m.name, f"{m.checkpoint_shape} vs {m.module_shape}")
            for m in self.mismatched
        ]
        rows += [("missing", name, "not in checkpoint") for name in self.missing]
        rows += [("unexpected", name, "not in module") for name in self.unexpected]
        rows += [("nonfinite", name, "has NaN or inf") for name in self.nonfinite]
        lines = [self.summary()]
        if rows:
            width = max(len(name) for _, name, _ in rows)
            lines += [f"  {status:<10}  {name:<{width}}  {detail}" for status, name, detail in rows]
        return "\n".join(lines)


def load_partial(
    module: nn.Module,
    source: PartialSource,
    *,
    rename: PrefixMap | RenameFn | None = None,
    strict: bool = False,
) -> LoadReport:
    """Copy every tensor whose name and shape match from ``source`` into ``module``.

    Parameters and buffers (BatchNorm statistics) count alike. Everything is checked before the
    first copy, so an error leaves the module untouched. Tensors are converted to the dtype and
    device of the module's (a half-precision checkpoint loads into a float32 model).

    Args:
        module: The model to fill; changed in place. A model wrapped by ``torch.compile``,
            ``DistributedDataParallel`` or ``DataParallel`` is filled through the wrapper, with
            the names of the model inside (no ``_orig_mod.`` or ``module.``).
        source: A checkpoint path, a state dict (containers such as ``{"model": ...}`` and the
            ``module.`` / ``_orig_mod.`` wrapper prefixes are removed), or another module.
        rename: Maps checkpoint names to module names. A mapping replaces the longest matching
            old prefix by the new one (``{"base.": ""}``; a value of ``None`` drops those names,
            ``{"": "backbone."}`` adds a prefix); names matching no prefix stay as they are. A
            function gets each name and returns the new one, or ``None`` to drop it.
        strict: Raise instead of loading when anything would be skipped.

    Returns:
        The report; ``print(report)`` shows a short table of what was skipped.

    Raises:
        PartialLoadError: Nothing matched (often a prefix mistake; the message suggests a
            ``rename``), or ``strict`` and something would be skipped.
        CheckpointError: The source cannot be read, or ``rename`` maps two names to one.
    """
    module = _unwrap_target(module)
    checkpoint, unwrapped = _source_state_dict(source)
    renamed, dropped = _renamed(checkpoint, rename)
    targets = module.state_dict()
    # Extra state (such as a head's class names) is not a tensor to copy but a value its module
    # takes through set_extra_state, which also checks it; one absent from the checkpoint is
    # not missing: the module keeps its own.
    fit = compare_state_dicts(
        {name: value for name, value in targets.items() if not _is_extra_state(name)},
        {name: value for name, value in renamed.items() if not _is_extra_state(name)},
    )
    extra_owners = {
        name: owner
        for name in renamed
        if _is_extra_state(name) and (owner := _extra_state_owner(module, name)) is not None
    }
    taken = set(fit.matched) | set(extra_owners)
    mismatched = {m.name for m in fit.mismatched}
    loaded = [name for name in renamed if name in taken]
    unexpected = [name for name in renamed if name not in taken and name not in mismatched]
    nonfinite = nonfinite_names(renamed, loaded)
    cast = [
        name
        for name in loaded
        if name not in extra_owners and renamed[name].dtype != targets[name].dtype
    ]
    report = LoadReport(
        loaded=tuple(loaded),
        missing=fit.missing,
        unexpected=tuple(unexpected),
        mismatched=fit.mismatched,
        dropped=tuple(dropped),
        unwrapped=unwrapped,
        nonfinite=tuple(nonfinite),
        cast=tuple(cast),
    )
    if not loaded:
        raise PartialLoadError(_nothing_loaded(report, checkpoint, targets, rename))
    if strict and report.skipped:
        raise PartialLoadError(f"strict load refused, nothing was copied:\n{report}")
    # Extra state first: it may refuse (different class names) while nothing is copied yet.
    for name, owner in extra_owners.items():
        owner.load_state_dict({_EXTRA_STATE: renamed[name]}, strict=False)
    with torch.no_grad():
        for name in loaded:
            if name not in extra_owners:
                targets[name].copy_(renamed[name])
    _log(report, renamed, targets)
    return report


def _is_extra_state(name: str) -> bool:
    return name == _EXTRA_STATE or name.endswith("." + _EXTRA_STATE)


def _extra_state_owner(module: nn.Module, name: str) -> nn.Module | None:
    """The submodule that stores extra state under ``name``, or ``None`` if there is none."""
    path = name[: -len(_EXTRA_STATE)].rstrip(".")
    try:
        owner = module.get_submodule(path)
    except AttributeError:
        return None
    # Either PyTorch's extra-state API or a module that reads extra keys in its own loader.
    kind = type(owner)
    takes_extra = (
        kind.set_extra_state is not nn.Module.set_extra_state
        or kind._load_from_state_dict is not nn.Module._load_from_state_dict
    )
    return owner if takes_extra else None


def _source_state_dict(source: PartialSource) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict()), ()
    if isinstance(source, str | os.PathLike):
        content = read_checkpoint(source)
    elif isinstance(source, Mapping):
        content = dict(source)
    else:
        raise TypeError(
            "source must be a checkpoint path, a state dict or an nn.Module, got "
            f"{type(source).__name__}"
        )
    unwrapped = unwrap_state_dict(content, backbone=False)
    return unwrapped.state_dict, unwrapped.steps


def _renamed(
    state_dict: dict[str, Tensor], rename: PrefixMap | RenameFn | None
) -> tuple[dict[str, Tensor], list[str]]:
    if rename is None:
        return state_dict, []
    fn = _prefix_rename(rename) if isinstance(rename, Mapping) else rename
    if not callable(fn):
        raise TypeError(
            f"rename must be a mapping of prefixes or a function, got {type(rename).__name__}"
        )
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for name, tensor in state_dict.items():
        new = fn(name)
        if new is None:
            dropped.append(name)
            continue
        if not isinstance(new, str):
            raise TypeError(f"rename returned {new!r} for {name!r}; expected a str or None")
        if new in out:
            raise CheckpointError(
                f"rename maps both {origin[new]!r} and {name!r} to {new!r}; drop one of them "
                "(a prefix mapped to None, or a function returning None)"
            )
        out[new] = tensor
        origin[new] = name
    return out, dropped


def _prefix_rename(prefixes: PrefixMap) -> RenameFn:
    for old, new in prefixes.items():
        if not isinstance(old, str) or not (new is None or isinstance(new, str)):
            raise TypeError(
                f"rename mapping entries must be str -> str or None, got {old!r} -> {new!r}"
            )
    # Longest first, so {"a.": "x.", "a.b.": "y."} sends "a.b.c" to "y.c".
    ordered = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    def apply(name: str) -> str | None:
        for old, new in ordered:
            if name.startswith(old):
                return None if new is None else new + name[len(old) :]
        return name

    return apply


def _nothing_loaded(
    report: LoadReport,
    checkpoint: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    rename: PrefixMap | RenameFn | None,
) -> str:
    shown = ", ".join(list(checkpoint)[:4])
    wanted = ", ".join(list(targets)[:4])
    lines = [
        f"nothing was loaded: no checkpoint tensor matches a module tensor by name and shape "
        f"({report.summary()})",
        f"  checkpoint names: {shown}{', ...' if len(checkpoint) > 4 else ''}",
        f"  module names:     {wanted}{', ...' if len(targets) > 4 else ''}",
    ]
    if report.mismatched:
        first = report.mismatched[0]
        lines.append(
            f"  every common name has another shape, e.g. {first.name}: checkpoint "
            f"{first.checkpoint_shape} vs module {first.module_shape}; is it another model size?"
        )
    elif rename is None:
        hint = _suggest_rename(checkpoint, targets)
        if hint:
            lines.append(f"  the names differ by a prefix; try rename={hint!r}")
    return "\n".join(lines)


def _unwrap_target(module: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` / DDP / DataParallel wrappers, however nested."""
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and isinstance(
            inner := getattr(module, "_orig_mod", None), nn.Module
        ):
            module = inner
        else:
            return module


def _suggest_rename(
    checkpoint: Mapping[str, Tensor], module: Mapping[str, Tensor]
) -> dict[str, str] | None:
    """Prefix changes that turn checkpoint names into module names, most useful first.

    Each checkpoint name votes for the prefix pairs given by its longest dotted suffix that also
    ends module names, preferring module tensors of the same shape. A bare last component
    ("weight") only votes when that leaves a single candidate.
    """
    owners: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, tensor in module.items():
        for cut in _dot_cuts(name):
            owners.setdefault(name[cut:], []).append((name[:cut], tuple(tensor.shape)))
    votes: Counter[tuple[str, str]] = Counter()
    for name, tensor in checkpoint.items():
        for cut in _dot_cuts(name):
            candidates = owners.get(name[cut:])
            if not candidates:
                continue
            same_shape = {prefix for prefix, shape in candidates if shape == tuple(tensor.shape)}
            pool = same_shape or {prefix for prefix, _ in candidates}
            if len(pool) == 1 or "." in name[cut:]:
                votes.update((name[:cut], new) for new in sorted(pool) if new != name[:cut])
            break
    # Heads of the same structure tie on votes; the more similar prefix text breaks the tie
    # ("country_cls." -> "heads.country." rather than "heads.cn.").
    ranked = sorted(
        votes.items(),
        key=lambda item: (-item[1], -SequenceMatcher(None, *item[0]).ratio(), item[0]),
    )
    suggestion: dict[str, str] = {}
    for (old, new), _ in ranked:
        if old not in suggestion and new not in suggestion.values() and len(suggestion) < 4:
            suggestion[old] = new
    return suggestion or None


def _dot_cuts(name: str) -> list[int]:
    """Where a dotted suffix of ``name`` can start, longest suffix first (0 = the whole name)."""
    return [0] + [i + 1 for i, char in enumerate(name) if char == "."]


def _log(report: LoadReport, renamed: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
    logger.info("load_partial: %s", report.summary())
    for label, names in (("missing", report.missing), ("unexpected", report.unexpected)):
        if names:
            logger.warning(
                "load_partial: %d %s: %s%s",
                len(names),
                label,
                ", ".join(names[:_SHOWN]),
                ", ..." if len(names) > _SHOWN else "",
            )
    if report.mismatched:
        logger.warning(
            "load_partial: %d shape mismatches: %s%s",
            len(report.mismatched),
            "; ".join(
                f"{m.name} checkpoint {m.checkpoint_shape} vs module {m.module_shape}"
                for m in report.mismatched[:_SHOWN]
            ),
            "; ..." if len(report.mismatched) > _SHOWN else "",
        )
    if report.nonfinite:
        logger.warning(
            "load_partial: %d loaded tensors contain NaN or inf: %s",
            len(report.nonfinite),
            ", ".join(report.nonfinite[:_SHOWN]),
        )
    if report.cast:
        kinds = sorted({f"{renamed[n].dtype} -> {targets[n].dtype}" for n in report.cast})
        logger.info("load_partial: converted %d tensors (%s)", len(report.cast), ", ".join(kinds))
