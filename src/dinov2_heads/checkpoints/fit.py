"""Whether a state dict fits a module: the one comparison of names and shapes, and its error.

Every loader compares the same way: a strict backbone load (``create_backbone``,
``load_backbone``), ``load_partial``'s report and the check that two copies of a model in one
folder agree. A misfit that stops a load is an
:class:`~dinov2_heads.checkpoints.ArchitectureMismatchError` with the message built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dinov2_heads.checkpoints.errors import ArchitectureMismatchError

__all__ = ["ShapeMismatch", "StateDictFit", "check_fit", "compare_state_dicts"]

#: Names shown per kind of misfit in a message.
_SHOWN = 6


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor present on both sides with different shapes; it was not copied."""

    name: str
    checkpoint_shape: tuple[int, ...]
    module_shape: tuple[int, ...]


@dataclass(frozen=True)
class StateDictFit:
    """How a state dict lines up with the one a module expects.

    Attributes:
        matched: On both sides with the same shape (in the state dict's order).
        missing: Expected, absent from the state dict (in the module's order).
        unexpected: In the state dict, not expected.
        mismatched: On both sides with different shapes.
    """

    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[ShapeMismatch, ...]

    @property
    def complete(self) -> bool:
        """Whether everything matched: nothing missing, unexpected or of another shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, given: str = "the weights", expected: str = "the model") -> list[str]:
        """One line per kind of misfit, e.g. ``missing from the weights (2): a, b``."""
        lines = []
        if self.mismatched:
            shapes = "; ".join(
                f"{m.name} {m.checkpoint_shape} vs {m.module_shape}"
                for m in self.mismatched[:_SHOWN]
            )
            lines.append(f"shapes, {given} vs {expected} ({len(self.mismatched)}): {shapes}")
        if self.missing:
            lines.append(f"missing from {given} ({len(self.missing)}): {_listed(self.missing)}")
        if self.unexpected:
            lines.append(f"not in {expected} ({len(self.unexpected)}): {_listed(self.unexpected)}")
        return lines


def compare_state_dicts(expected: Mapping[str, Any], given: Mapping[str, Any]) -> StateDictFit:
    """Compare names and shapes of ``given`` (a checkpoint) with ``expected`` (a module's).

    Values without a ``shape`` (extra state, plain Python values) count as shape ``()``.
    """
    matched: list[str] = []
    unexpected: list[str] = []
    mismatched: list[ShapeMismatch] = []
    for name, value in given.items():
        if name not in expected:
            unexpected.append(name)
        elif _shape(value) != _shape(expected[name]):
            mismatched.append(ShapeMismatch(name, _shape(value), _shape(expected[name])))
        else:
            matched.append(name)
    missing = [name for name in expected if name not in given]
    return StateDictFit(tuple(matched), tuple(missing), tuple(unexpected), tuple(mismatched))


def check_fit(
    expected: Mapping[str, Any],
    given: Mapping[str, Any],
    *,
    what: str,
    fix: str | None = None,
    given_name: str = "the weights",
    expected_name: str = "the model",
) -> StateDictFit:
    """Raise unless ``given`` has exactly the names and shapes of ``expected``.

    Args:
        expected: The state dict wanted (a module's; meta tensors will do).
        given: The state dict offered.
        what: The first line of the message, e.g. ``the weights do not fit dinov2_vits14``.
        fix: How to get out, the last line of the message.
        given_name: What ``given`` is called in the message.
        expected_name: What ``expected`` is called in the message.

    Returns:
        The comparison, complete.

    Raises:
        ArchitectureMismatchError: Names the mismatched, missing and unexpected tensors.
    """
    fit = compare_state_dicts(expected, given)
    if not fit.complete:
        lines = [f"{what}:", *(f"  {line}" for line in fit.describe(given_name, expected_name))]
        if fix:
            lines.append(f"  {fix}")
        raise ArchitectureMismatchError("\n".join(lines))
    return fit


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
