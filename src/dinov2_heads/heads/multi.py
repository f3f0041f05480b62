"""``MultiHead``: several named heads on one set of features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import Self

from dinov2_heads.features.features import Features
from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.registry import build_head, head_spec


class MultiHead(nn.ModuleDict):
    """Named heads that all read the same :class:`Features` (one backbone pass, many outputs).

    ``MultiHead({"brand": LinearHead(...), "colour": Conv1dNeck(...)})`` returns
    ``{"brand": (B, K1), "colour": (B, K2)}``. State dict keys are ``"{name}.{key}"`` (for
    example ``brand.weight``), so the heads of a blog-style model
    (``country_cls.conv1.conv.weight``) load under the same names. It is a ``ModuleDict``:
    ``multi["brand"]``, ``len``, iteration and ``items()`` work as usual.

    Args:
        heads: Names to heads; each head takes a :class:`Features` and returns logits (B, K).
            Names are state dict prefixes, so they cannot be empty or contain dots, and
            ``training`` (a module's own flag) is refused. Reach a head as ``multi[name]``
            (``multi.type`` is still ``nn.Module.type``).

    Example:
        >>> spec = {"heads": {"colour": {"type": "LinearHead", "config": {"embed_dim": 384,
        ...     "num_classes": 4}}}}
        >>> MultiHead.from_config(spec)["colour"].num_classes
        4
    """

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError(
                f"MultiHead needs a non-empty mapping of names to heads, got {heads!r}; "
                'pass e.g. {"brand": LinearHead(384, 178)}'
            )
        super().__init__()
        for name, head in heads.items():
            self[name] = head

    def __setitem__(self, name: str, head: nn.Module) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"head name {name!r} is not usable as a state dict prefix; use a non-empty "
                "name without dots, such as 'brand' or 'vehicle_type'"
            )
        if not isinstance(head, nn.Module):
            raise TypeError(f"head {name!r} must be an nn.Module, got {type(head).__name__}")
        if name in vars(self):
            # Instance state such as "training" is reassigned by train()/eval(), which
            # nn.Module refuses once a child module holds the name.
            raise ValueError(
                f"head name {name!r} is taken by the state of every nn.Module; choose another "
                f"name, such as {name.strip('_') + '_head'!r}"
            )
        if hasattr(self, name) and name not in self._modules:
            # Names such as "type" (a vehicle attribute) are also nn.Module methods, which
            # add_module refuses. The head is still registered, so it is in the state dict as
            # "type.*" and reached as multi["type"]; only attribute access keeps the method.
            self._modules[name] = head
            return
        super().__setitem__(name, head)

    @property
    def names(self) -> tuple[str, ...]:
        """Head names in order."""
        return tuple(self.keys())

    @property
    def class_names(self) -> dict[str, tuple[str, ...] | None]:
        """Each head's class names (``None`` for a head without names)."""
        return {name: getattr(head, "class_names", None) for name, head in self.items()}

    def required_blocks(self, depth: int) -> tuple[tuple[int, bool], ...]:
        """The (absolute block index, norm) pairs any head reads, sorted and distinct.

        The union of each head's ``required_blocks(depth)``; heads without that method (the
        classifiers) need only the last blocks. ``FrozenBackbone.for_heads`` uses it.
        """
        needed: set[tuple[int, bool]] = set()
        for head in self.values():
            required = getattr(head, "required_blocks", None)
            if callable(required):
                needed.update(required(depth))
        return tuple(sorted(needed))

    def config(self) -> dict[str, Any]:
        """``{"heads": {name: {"type": ..., "config": ...}}}``, JSON-able, heads in order.

        Raises:
            ValueError: A head's type is not in :data:`~dinov2_heads.heads.HEAD_TYPES`.
        """
        return {"heads": {name: head_spec(head) for name, head in self.items()}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """New heads (fresh weights) from :meth:`config`'s output, each built by the registry.

        A training specification has the same form, for example
        ``{"heads": {"brand": {"type": "Conv1dNeck", "config": {"num_patches": [9, 18],
        "embed_dim": 384, "num_classes": 178}}}}``; arguments with defaults may be left out.

        Raises:
            TypeError: ``config`` or a head's entry is not a mapping.
            ValueError: Another key than ``heads``, no heads, an entry without ``type`` and
                ``config`` (or with other keys), an unknown type, or a configuration the head
                refuses (the message names the head).
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                "a MultiHead config must be a mapping such as "
                '{"heads": {"brand": {"type": "LinearHead", "config": {...}}}}, '
                f"got {type(config).__name__}"
            )
        if set(config) != {"heads"} or not isinstance(config["heads"], Mapping):
            raise ValueError(
                "a MultiHead config has one key, 'heads', mapping names to "
                f'{{"type": ..., "config": ...}}, got the keys {sorted(map(str, config))}'
            )
        heads: dict[str, nn.Module] = {}
        for name, spec in config["heads"].items():
            if not isinstance(spec, Mapping):
                raise TypeError(
                    f"MultiHead config: head {name!r} must be a mapping "
                    f'{{"type": ..., "config": ...}}, got {type(spec).__name__}'
                )
            if set(spec) != {"type", "config"}:
                raise ValueError(
                    f"MultiHead config: head {name!r} needs exactly the keys 'type' and "
                    f"'config', got {sorted(map(str, spec))}"
                )
            try:
                heads[name] = build_head(spec["type"], spec["config"])
            except (TypeError, ValueError) as error:
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(f"MultiHead config: head {name!r}: {error}") from error
        return cls(heads)

    def forward(self, features: Features | Tensor) -> dict[str, Tensor]:
        """``{name: logits (B, K_name)}`` for every head, in order.

        ``features`` is passed to every head as it is: :class:`Features`, or a plain
        (B, in_features) tensor when every head takes one (``LinearHead``).
        """
        return {name: head(features) for name, head in self.items()}

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
        # PyTorch loads this module before its heads: every head's class names are checked
        # here, so names that differ in a later head leave the earlier heads untouched.
        for name, head in self.items():
            if isinstance(head, ClassNamesMixin):
                head.incoming_class_names(state_dict, f"{prefix}{name}.")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
