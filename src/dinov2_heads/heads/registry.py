"""The head types this library builds from a name and a configuration.

``HEAD_TYPES`` is the registry: a new head type is its own file plus one line here. Each type
describes itself with ``head.config()`` (JSON-able constructor arguments, class names included)
and is rebuilt with ``type.from_config(config)``; :func:`~dinov2_heads.export.save_heads`,
:func:`~dinov2_heads.export.load_heads` and :func:`~dinov2_heads.export.export_onnx` go through
the helpers below and know no head type by name.

The registry holds heads that give one output. A
:class:`~dinov2_heads.heads.MultiHead` is the container over them: ``MultiHead.from_config``
builds each of its heads here from ``{"heads": {name: {"type": ..., "config": ...}}}``.

Your own head class joins by the same line, ``HEAD_TYPES["MyHead"] = MyHead``, when it has
``config()`` and a ``from_config`` class method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dinov2_heads.heads.conv1d_neck import Conv1dNeck
from dinov2_heads.heads.dpt_depth import DPTDepthHead
from dinov2_heads.heads.linear import LinearHead
from dinov2_heads.heads.linear_depth import LinearDepthHead
from dinov2_heads.heads.linear_segmentation import LinearSegmentationHead

#: Type name -> head class. Names are what head files and JSON specifications store.
HEAD_TYPES: dict[str, type[nn.Module]] = {
    "LinearHead": LinearHead,
    "Conv1dNeck": Conv1dNeck,
    "LinearDepthHead": LinearDepthHead,
    "DPTDepthHead": DPTDepthHead,
    "LinearSegmentationHead": LinearSegmentationHead,
}


def head_type_name(head: nn.Module) -> str:
    """The registry name of ``head``'s exact type.

    Raises:
        ValueError: The type is not in :data:`HEAD_TYPES` (a subclass of a registered type is
            not the registered type: its forward may differ).
    """
    name = registered_type_name(head)
    if name is None:
        raise ValueError(
            f"{_qualified_name(type(head))} is not a registered head type; the known ones are "
            f"{_known()}. Register it with HEAD_TYPES[{type(head).__name__!r}] = "
            f"{type(head).__name__} (it needs config() and a from_config class method)"
        )
    return name


def registered_type_name(head: nn.Module) -> str | None:
    """The registry name of ``head``'s exact type, or ``None`` when it is not registered."""
    return next((name for name, cls in HEAD_TYPES.items() if type(head) is cls), None)


def build_head(type_name: str, config: Mapping[str, Any]) -> nn.Module:
    """A new head of the registered type ``type_name`` from its ``config()``.

    Args:
        type_name: A key of :data:`HEAD_TYPES`, such as ``"Conv1dNeck"``.
        config: What ``head.config()`` returned (read back from JSON is fine).

    Raises:
        ValueError: An unknown type name (the message lists the known ones), or a configuration
            the head refuses.
        TypeError: A configuration that is not a mapping.
    """
    if not isinstance(type_name, str) or type_name not in HEAD_TYPES:
        raise ValueError(f"unknown head type {type_name!r}; the known head types are {_known()}")
    head_type = HEAD_TYPES[type_name]
    from_config = getattr(head_type, "from_config", None)
    if not callable(from_config):
        raise TypeError(
            f"the registered head type {type_name!r} ({_qualified_name(head_type)}) has no "
            "from_config class method"
        )
    head = from_config(config)
    if not isinstance(head, nn.Module):
        raise TypeError(
            f"{_qualified_name(head_type)}.from_config returned a {type(head).__name__}, "
            "not an nn.Module"
        )
    return head


def head_spec(head: nn.Module) -> dict[str, Any]:
    """``{"type": name, "config": head.config()}`` of a registered head, JSON-able.

    This is the form :func:`build_head` and ``MultiHead.from_config`` read back.
    """
    config = getattr(head, "config", None)
    name = head_type_name(head)
    if not callable(config):
        raise TypeError(f"the registered head type {name!r} has no config() method")
    return {"type": name, "config": config()}


def _known() -> str:
    return ", ".join(sorted(HEAD_TYPES))


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
