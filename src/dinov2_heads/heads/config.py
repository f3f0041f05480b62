"""Head configurations: the JSON-able constructor arguments a head describes itself with."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def config_arguments(head_type: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked against ``head_type.__init__``: the keyword arguments to build it.

    Every key must be a parameter of the constructor and every parameter without a default must
    be present, so a hand-written or edited configuration fails here with the head's name and
    its parameters, not with a bare ``TypeError`` from the constructor.

    Args:
        head_type: The head class.
        config: ``{parameter: value}``, as :meth:`config` of the head returns it.

    Raises:
        TypeError: ``config`` is not a mapping with string keys.
        ValueError: An unknown key, or a required one missing.
    """
    name = head_type.__name__
    if not isinstance(config, Mapping) or not all(isinstance(key, str) for key in config):
        raise TypeError(
            f"a {name} config must be a mapping of argument names to values, such as "
            f"{name}(...).config() returns, got {type(config).__name__}"
        )
    parameters = [
        parameter
        for parameter in inspect.signature(head_type).parameters.values()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    known = [parameter.name for parameter in parameters]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(
            f"the {name} config has unknown key(s) {unknown}; its keys are {', '.join(known)}"
        )
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in config]
    if missing:
        raise ValueError(
            f"the {name} config lacks the required key(s) {missing}; its keys are "
            f"{', '.join(known)}"
        )
    return dict(config)
