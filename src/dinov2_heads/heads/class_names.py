"""Class names that travel with a head inside its state dict."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: The state dict key (after the module's prefix) that holds the class names; PyTorch's own
#: name for per-module extra state, so strict loading treats it as part of the module.
EXTRA_STATE_KEY = "_extra_state"


def encode_class_names(names: Iterable[str]) -> Tensor:
    """Class names as a uint8 tensor of UTF-8 JSON, storable in any state dict format.

    A tensor (rather than a Python list) keeps ``torch.load(..., weights_only=True)`` and
    safetensors files working.
    """
    payload = json.dumps({"class_names": list(names)}, ensure_ascii=False).encode("utf-8")
    return torch.tensor(list(payload), dtype=torch.uint8)


def decode_class_names(value: Any) -> tuple[str, ...]:
    """The class names stored by :func:`encode_class_names` (``ValueError`` if unreadable)."""
    try:
        if isinstance(value, Tensor):
            value = json.loads(bytes(value.cpu().tolist()).decode("utf-8"))
        names = value["class_names"] if isinstance(value, Mapping) else value
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"expected a list of strings, got {type(names).__name__}")
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"the {EXTRA_STATE_KEY!r} entry of this state dict is not a list of class names "
            f"({error}); it may come from another library's module"
        ) from error
    return tuple(names)


def check_class_names(
    names: Iterable[str] | None, num_classes: int, who: str
) -> tuple[str, ...] | None:
    """Validated class names: K distinct strings, or ``None``."""
    return None if names is None else _validated(names, num_classes, who)


def _validated(names: Iterable[str], num_classes: int, who: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(
            f"{who}: class_names must be a sequence of strings, got the string {names!r}"
        )
    names = tuple(names)
    if not all(isinstance(name, str) for name in names):
        bad = next(name for name in names if not isinstance(name, str))
        raise TypeError(f"{who}: class names must be strings, got {bad!r}")
    if len(names) != num_classes:
        raise ValueError(
            f"{who}: got {len(names)} class names for {num_classes} classes; "
            "pass exactly one name per class, in class index order"
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{who}: class name {name!r} appears twice; names must be distinct")
        seen.add(name)
    return names


class ClassNamesMixin(nn.Module):
    """Optional class names for a head, saved in its state dict and checked on load.

    The names are stored under ``_extra_state`` only when they are set, so a head without
    names has exactly the state dict of the architecture it reproduces (``{"weight", "bias"}``
    for :class:`~dinov2_heads.heads.LinearHead`) and loads files that have no names with
    ``strict=True``. Loading a state dict with names into a head without names adopts them;
    into a head with names, they must be equal; a state dict without names keeps the head's.

    Subclasses set ``num_classes`` before assigning ``class_names``.
    """

    num_classes: int
    _class_names: tuple[str, ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """K class names in class index order, or ``None`` when not set."""
        return self._class_names

    @class_names.setter
    def class_names(self, names: Iterable[str] | None) -> None:
        self._class_names = check_class_names(names, self.num_classes, type(self).__name__)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._class_names is not None:
            destination[prefix + EXTRA_STATE_KEY] = encode_class_names(self._class_names)

    def incoming_class_names(
        self, state_dict: Mapping[str, Any], prefix: str = ""
    ) -> tuple[str, ...] | None:
        """The class names ``state_dict`` would give this head (None if it has none).

        Raises:
            ValueError: They are malformed, or differ from the names this head already has.
        """
        key = prefix + EXTRA_STATE_KEY
        if key not in state_dict:
            return None
        who = type(self).__name__ + (f" {prefix[:-1]!r}" if prefix else "")
        incoming = _validated(decode_class_names(state_dict[key]), self.num_classes, who)
        if self._class_names is not None and incoming != self._class_names:
            raise ValueError(_names_differ(who, self._class_names, incoming))
        return incoming

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + EXTRA_STATE_KEY
        incoming = self.incoming_class_names(state_dict, prefix)
        if key in state_dict:
            # The base class does not know this key and would report it as unexpected.
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        errors_before = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if incoming is not None and len(error_msgs) == errors_before:
            self._class_names = incoming


def _names_differ(who: str, ours: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    index = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    return (
        f"{who}: the state dict's class names differ from this head's: class {index} is "
        f"{theirs[index]!r} in the state dict but {ours[index]!r} here; build the head with "
        "class_names=None to take the names from the state dict"
    )
