"""``FeatureParts``: the parts of a store's features that a reader needs, and what heads read.

A store holds, per sample, the token arrays it was asked to keep (class tokens and the mean
patch token always; every patch token and the register tokens when kept) and the chosen blocks
of dense heads. Patch tokens and blocks are most of its bytes: ViT-S/14 at 224x224 keeps 1.5 KiB
per image pooled and 193.5 KiB with patch tokens. A reader that uses only the pooled tokens (a
linear head, the linear probe grid, k-NN, logistic regression, search) asks for them alone, and
the store reads and converts nothing else; the result is the same :class:`Features` less the
parts left out (``None``, or missing from ``Features.blocks``).

What heads read is what they already declare for :meth:`FrozenBackbone.for_heads
<dinov2_heads.features.FrozenBackbone.for_heads>`:

- ``required_blocks(depth)`` (the dense heads): those blocks, which they read through
  ``Features.block`` / ``block_map``;
- ``feature_parts``: the names of the token arrays (``Features`` fields) the head reads; the
  classifiers on pooled tokens (``LinearHead``, ``LinearProbeGrid``) declare
  ``("class_tokens", "patch_mean")``, ``Conv1dNeck`` ``("class_tokens", "patch_tokens")``;
- a head that declares neither (your own) may read anything: everything is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from dinov2_heads.cache.layout import resolve_keep
from dinov2_heads.cache.manifest import TOKEN_ARRAYS, BlockKey

__all__ = ["POOLED", "FeatureParts", "Parts", "parts_for_heads"]

#: The token arrays every ``Features`` holds (it cannot exist without them), so always read.
POOLED: tuple[str, ...] = ("class_tokens", "patch_mean")

_PRESETS = ("pooled", "patch_tokens", "all")


@dataclass(frozen=True)
class FeatureParts:
    """What a reader takes from a feature store: some token arrays and some chosen blocks.

    Attributes:
        tokens: Token arrays to read, named as the ``Features`` fields (and the store's
            ``keep``): ``class_tokens`` and ``patch_mean`` always, ``patch_tokens`` and
            ``register_tokens`` when asked. In ``TOKEN_ARRAYS`` order.
        blocks: The (absolute block index, final norm applied) pairs the reader gets through
            ``Features.block``, sorted: each is read from the chosen blocks
            (``block_tokens.bin``), or from the patch tokens when it is one of the last blocks
            they hold (the patch tokens are then read even when ``tokens`` leaves them out).
    """

    tokens: tuple[str, ...] = POOLED
    blocks: tuple[BlockKey, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _token_names(self.tokens, "FeatureParts.tokens"))
        object.__setattr__(self, "blocks", _block_keys(self.blocks))

    @classmethod
    def of(cls, parts: Parts) -> FeatureParts:
        """``parts`` as a ``FeatureParts``.

        Args:
            parts: A ``FeatureParts``; a preset of the store's ``keep``: ``"pooled"`` (class
                tokens and the mean patch token), ``"patch_tokens"`` (also every patch token),
                ``"all"`` (also the register tokens); or a sequence of token array names.
                A preset or a sequence reads no chosen blocks.

        Raises:
            ValueError: An unknown preset or array name (the message lists the known ones).
            TypeError: Anything else.
        """
        if isinstance(parts, FeatureParts):
            return parts
        if isinstance(parts, str):
            if parts not in _PRESETS:
                raise ValueError(
                    f"parts={parts!r} is not a preset; use 'pooled', 'patch_tokens', 'all', a "
                    f"list of {list(TOKEN_ARRAYS)} or a FeatureParts"
                )
            return cls(resolve_keep(parts)[0])
        if isinstance(parts, Iterable) and not isinstance(parts, bytes | Mapping):
            return cls(tuple(parts))
        raise TypeError(
            f"parts must be a preset ('pooled', 'patch_tokens', 'all'), a list of token array "
            f"names or a FeatureParts, got {type(parts).__name__}"
        )

    def union(self, other: FeatureParts) -> FeatureParts:
        """The parts that either reader needs."""
        return FeatureParts((*self.tokens, *other.tokens), tuple({*self.blocks, *other.blocks}))


#: What ``FeatureStore.features(parts=...)`` and ``FeatureDataset(parts=...)`` take.
Parts = FeatureParts | str | Sequence[str]


def parts_for_heads(heads: nn.Module, depth: int | None) -> FeatureParts | None:
    """The parts ``heads`` read, or ``None`` when a head may read anything (read everything).

    Args:
        heads: One head, a ``MultiHead`` (or any ``ModuleDict`` of heads, nested or not), or
            another module that feeds on ``Features`` such as a ``LinearProbeGrid``.
        depth: The backbone depth the store records, which places the blocks of
            ``required_blocks(depth)``; ``None`` when unknown (a head with
            ``required_blocks`` then makes this ``None``).

    Raises:
        TypeError, ValueError: A head's ``feature_parts`` is not a sequence of token array
            names (the message names the head).
    """
    parts = FeatureParts()
    for head in _leaves(heads):
        declared = getattr(head, "feature_parts", None)
        required = getattr(head, "required_blocks", None)
        if declared is None and not callable(required):
            return None
        if declared is not None:
            if isinstance(declared, str) or not isinstance(declared, Iterable):
                raise TypeError(
                    f"{type(head).__name__}.feature_parts must be a tuple of token array names "
                    f"such as ('class_tokens', 'patch_mean'), got {declared!r}"
                )
            tokens = _token_names(tuple(declared), f"{type(head).__name__}.feature_parts")
            parts = parts.union(FeatureParts(tokens))
        if callable(required):
            if depth is None:
                return None
            parts = parts.union(FeatureParts(blocks=tuple(required(depth))))
    return parts


def _leaves(heads: nn.Module) -> list[nn.Module]:
    if isinstance(heads, nn.ModuleDict):
        return [leaf for head in heads.values() for leaf in _leaves(head)]
    return [heads]


def _token_names(names: Any, what: str) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{what} must be a sequence of token array names, got {names!r}")
    names = tuple(names)
    unknown = [name for name in names if name not in TOKEN_ARRAYS]
    if unknown:
        raise ValueError(
            f"{what}: unknown token arrays {unknown}; choose from {list(TOKEN_ARRAYS)}"
        )
    chosen = {*POOLED, *names}
    return tuple(name for name in TOKEN_ARRAYS if name in chosen)


def _block_keys(blocks: Any) -> tuple[BlockKey, ...]:
    if isinstance(blocks, str | bytes) or not isinstance(blocks, Iterable):
        raise TypeError(f"FeatureParts.blocks must be (index, norm) pairs, got {blocks!r}")
    keys = set()
    for key in blocks:
        if (
            not isinstance(key, tuple)
            or len(key) != 2
            or isinstance(key[0], bool)
            or not isinstance(key[0], int)
            or key[0] < 0
            or not isinstance(key[1], bool)
        ):
            raise ValueError(
                "FeatureParts.blocks must be (absolute block index >= 0, norm: bool) pairs, "
                f"such as head.required_blocks(store.depth) gives; got {key!r}"
            )
        keys.add((key[0], key[1]))
    return tuple(sorted(keys))
