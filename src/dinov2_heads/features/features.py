"""``Features``: what a frozen backbone hands to the heads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
from einops import rearrange
from torch import Tensor

#: A block's tokens as (class token (B, D), patch tokens (B, N, D)), registers excluded.
BlockTokens = tuple[Tensor, Tensor]

#: A block as (absolute 0-based index, whether the final LayerNorm was applied).
BlockKey = tuple[int, bool]


@dataclass(frozen=True, eq=False)
class Features:
    """Class and patch tokens of the last n blocks of a backbone, after the final LayerNorm.

    Built by :class:`~dinov2_heads.FrozenBackbone` from live images, by the feature cache from
    disk, or from the official ``get_intermediate_layers`` tuple with :meth:`from_official`.
    It is a pytree of tensors, so it passes through ``torch.compile``, ``.to(device)`` and
    ``DataLoader`` collation (:meth:`cat`).

    Attributes:
        class_tokens: n tensors (B, D), oldest block first.
        patch_tokens: n tensors (B, N, D), oldest block first, registers excluded; ``None`` when
            only pooled features were kept (a compact cache) or read (a store read for linear
            heads). Heads that need every patch token, such as ``Conv1dNeck``, raise a clear
            error then.
        patch_mean: (B, D) mean over the N patch tokens of the last block (the official
            ``avgpool`` input).
        register_tokens: (B, R, D) register tokens of the last block, or ``None`` when the
            backbone has none or they were not kept.
        grid: The patch grid (h, w) = (H / 14, W / 14).
        blocks: Tokens of further blocks that dense heads read, keyed by (absolute block
            index, final norm applied) -> (class token (B, D), patch tokens (B, N, D)). Blocks
            already among the last n normed ones are not repeated here; read any block with
            :meth:`block` or :meth:`block_map`.
        depth: The backbone's depth (number of blocks), which resolves negative block indices;
            ``None`` when unknown.
    """

    class_tokens: tuple[Tensor, ...]
    patch_tokens: tuple[Tensor, ...] | None
    patch_mean: Tensor
    register_tokens: Tensor | None
    grid: tuple[int, int]
    blocks: Mapping[BlockKey, BlockTokens] = field(default_factory=dict)
    depth: int | None = None

    def __post_init__(self) -> None:
        if not self.class_tokens:
            raise ValueError("Features needs the class token of at least one block")
        if self.patch_tokens is not None and len(self.patch_tokens) != len(self.class_tokens):
            raise ValueError(
                f"got class tokens of {len(self.class_tokens)} blocks but patch tokens of "
                f"{len(self.patch_tokens)}; both must come from the same blocks"
            )
        h, w = self.grid
        if self.patch_tokens is not None and self.patch_tokens[-1].shape[1] != h * w:
            raise ValueError(
                f"patch tokens hold {self.patch_tokens[-1].shape[1]} patches but the grid "
                f"{h}x{w} has {h * w}"
            )
        self._check_blocks()

    def _check_blocks(self) -> None:
        if not isinstance(self.blocks, Mapping):
            raise TypeError(
                f"Features.blocks must be a mapping of (index, norm) to (class, patch) tokens, "
                f"got {type(self.blocks).__name__}"
            )
        depth = self.depth
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
            raise TypeError(f"Features.depth must be an int or None, got {depth!r}")
        h, w = self.grid
        for key, value in self.blocks.items():
            if (
                not isinstance(key, tuple)
                or len(key) != 2
                or isinstance(key[0], bool)
                or not isinstance(key[0], int)
                or not isinstance(key[1], bool)
                or key[0] < 0
                or (depth is not None and key[0] >= depth)
            ):
                limit = f" below the depth {depth}" if depth is not None else ""
                raise ValueError(
                    f"Features.blocks keys must be (absolute block index >= 0{limit}, norm: "
                    f"bool), got {key!r}"
                )
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or not all(isinstance(part, Tensor) for part in value)
                or value[1].ndim != 3
            ):
                raise ValueError(
                    f"Features.blocks[{key!r}] must be (class token (B, D), patch tokens (B, N, D))"
                )
            if value[1].shape[1] != h * w:
                raise ValueError(
                    f"block {key[0]} holds {value[1].shape[1]} patch tokens but the grid "
                    f"{h}x{w} has {h * w}"
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tokens(
        cls,
        class_tokens: Sequence[Tensor],
        patch_tokens: Sequence[Tensor],
        grid: tuple[int, int],
        register_tokens: Tensor | None = None,
        *,
        blocks: Mapping[BlockKey, BlockTokens] | None = None,
        depth: int | None = None,
    ) -> Features:
        """Features from per-block class tokens (B, D) and patch tokens (B, N, D).

        ``blocks`` and ``depth`` are the fields of the same names (further blocks for dense
        heads, and the backbone depth).
        """
        patches = tuple(patch_tokens)
        return cls(
            class_tokens=tuple(class_tokens),
            patch_tokens=patches,
            patch_mean=patches[-1].mean(dim=1),
            register_tokens=register_tokens,
            grid=(_grid_side(grid[0]), _grid_side(grid[1])),
            blocks=dict(blocks or {}),
            depth=depth,
        )

    @classmethod
    def from_official(
        cls, outputs: Sequence[tuple[Tensor, Tensor]], grid: tuple[int, int] | None = None
    ) -> Features:
        """Features from ``get_intermediate_layers(x, n, return_class_token=True)``.

        That is also what the official ``ModelWithIntermediateLayers`` returns. ``grid`` is
        needed only for non-square images; square grids are inferred from N.
        """
        # A (B, N, D) tensor of a batch of two also has length 2: check for real pairs.
        if not outputs or any(
            isinstance(item, Tensor)
            or len(item) != 2
            or not all(isinstance(part, Tensor) for part in item)
            for item in outputs
        ):
            raise ValueError(
                "expected the tuple of (patch_tokens, class_token) pairs returned by "
                "get_intermediate_layers(x, n, return_class_token=True)"
            )
        patches = [p for p, _ in outputs]
        if patches[-1].ndim == 4:  # reshape=True was used: (B, D, h, w)
            grid = grid or (patches[-1].shape[2], patches[-1].shape[3])
            patches = [rearrange(p, "b d h w -> b (h w) d") for p in patches]
        if grid is None:
            n = patches[-1].shape[1]
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"{n} patch tokens do not form a square grid; pass grid=(h, w) explicitly"
                )
            grid = (side, side)
        return cls.from_tokens([c for _, c in outputs], patches, grid)

    # ------------------------------------------------------------------ shape

    @property
    def n_blocks(self) -> int:
        """Number of blocks n whose outputs are held."""
        return len(self.class_tokens)

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.class_tokens[-1].shape[0])

    @property
    def embed_dim(self) -> int:
        """D."""
        return int(self.class_tokens[-1].shape[-1])

    @property
    def num_patches(self) -> int:
        """N = h * w."""
        return self.grid[0] * self.grid[1]

    @property
    def class_token(self) -> Tensor:
        """(B, D) class token of the last block."""
        return self.class_tokens[-1]

    def require_patch_tokens(self, who: str) -> tuple[Tensor, ...]:
        """The patch tokens, or a ``ValueError`` that names the head that needed them."""
        if self.patch_tokens is None:
            raise ValueError(
                f"{who} needs every patch token, but these Features hold only pooled tokens: "
                "from a compact cache, extract again with the patch tokens kept; from a store "
                "that keeps them but was read for other heads, read it for this head too "
                "(FeatureDataset(store, heads=...) with every head that will read the items)"
            )
        return self.patch_tokens

    def patch_map(self, block: int = -1) -> Tensor:
        """Patch tokens of one block as a (B, D, h, w) map."""
        tokens = self.require_patch_tokens("patch_map")[block]
        return rearrange(tokens, "b (h w) d -> b d h w", h=self.grid[0])

    # ------------------------------------------------------------------ any block

    @property
    def available_blocks(self) -> tuple[BlockKey, ...]:
        """Every (absolute index, norm) whose tokens :meth:`block` can return, sorted.

        The last n normed blocks are listed by absolute index when the depth is known.
        """
        keys = set(self.blocks)
        if self.depth is not None and self.patch_tokens is not None:
            keys.update((self.depth - self.n_blocks + i, True) for i in range(self.n_blocks))
        return tuple(sorted(keys))

    def resolve_block(self, index: int) -> int:
        """The absolute 0-based block index for ``index`` (negative counts from the end)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"a block index must be an int, got {index!r}")
        if index >= 0:
            if self.depth is not None and index >= self.depth:
                raise ValueError(
                    f"block {index} is out of range for a backbone of depth {self.depth}"
                )
            return index
        if self.depth is None:
            raise ValueError(
                f"block {index} counts from the end, but these Features do not know the "
                "backbone depth; pass an absolute index or build them with depth=..."
            )
        if index < -self.depth:
            raise ValueError(f"block {index} is out of range for a backbone of depth {self.depth}")
        return self.depth + index

    def block(self, index: int, *, norm: bool) -> BlockTokens:
        """Class token (B, D) and patch tokens (B, N, D) of one block.

        Args:
            index: The block, 0-based; negative counts from the end (-1 is the last block).
            norm: With the final LayerNorm applied (as ``get_intermediate_layers(norm=True)``)
                or not.

        Raises:
            ValueError: These features do not hold that block; the message lists those held
                and how to ask the backbone for it.
        """
        if not isinstance(norm, bool):
            raise TypeError(f"norm must be True or False, got {norm!r}")
        found = self._find_block(index, norm)
        if found is None:
            held = ", ".join(f"({i}, {n})" for i, n in self.available_blocks) or "none"
            extra = (
                f" (and the last {self.n_blocks} blocks, normed)"
                if self.depth is None and self.patch_tokens is not None
                else ""
            )
            raise ValueError(
                f"these Features do not hold block {index} with norm={norm}; they hold "
                f"(index, norm) = {held}{extra}. Extract it with FrozenBackbone(backbone, "
                f"blocks=[({index}, {norm})]) or build the backbone for your heads with "
                "FrozenBackbone.for_heads(backbone, heads); from a feature store that holds "
                "it, read it for this head (FeatureDataset(store, heads=...) with every head "
                "that will read the items)"
            )
        return found

    def block_map(self, index: int, *, norm: bool) -> Tensor:
        """Patch tokens of one block as a (B, D, h, w) map; see :meth:`block`."""
        _, patches = self.block(index, norm=norm)
        return rearrange(patches, "b (h w) d -> b d h w", h=self.grid[0])

    def _find_block(self, index: int, norm: bool) -> BlockTokens | None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"a block index must be an int, got {index!r}")
        last_n = self.patch_tokens
        if index < 0 and self.depth is None:
            # The last n normed blocks need no depth to be found from the end.
            if norm and last_n is not None and -index <= self.n_blocks:
                return self.class_tokens[index], last_n[index]
            self.resolve_block(index)  # raises the "depth unknown" error
        absolute = self.resolve_block(index)
        if (absolute, norm) in self.blocks:
            return self.blocks[(absolute, norm)]
        if norm and last_n is not None and self.depth is not None:
            offset = absolute - (self.depth - self.n_blocks)
            if 0 <= offset < self.n_blocks:
                return self.class_tokens[offset], last_n[offset]
        return None

    # ------------------------------------------------------------------ tensor ops

    def apply(self, fn: Any) -> Features:
        """A copy with ``fn`` applied to every tensor."""

        def each(value: Any) -> Any:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
                return tuple(fn(v) for v in value)
            if isinstance(value, Mapping):
                return {key: (fn(c), fn(p)) for key, (c, p) in value.items()}
            return value

        return Features(**{f.name: each(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args: Any, **kwargs: Any) -> Features:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self.apply(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, index: int | slice | Tensor) -> Features:
        """The samples at ``index`` along the batch dimension (an int keeps the dimension)."""
        if isinstance(index, int):
            batch = self.batch_size
            if not -batch <= index < batch:
                # Slicing would return an empty batch instead of failing.
                raise IndexError(f"index {index} is out of range for a batch of {batch}")
            index = slice(index, index + 1 if index != -1 else None)
        return self.apply(lambda t: t[index])

    @staticmethod
    def cat(items: Sequence[Features]) -> Features:
        """Concatenate along the batch dimension (the collate function for datasets)."""
        if not items:
            raise ValueError("cannot concatenate an empty list of Features")
        first = items[0]
        for item in items[1:]:
            if item.grid != first.grid or item.n_blocks != first.n_blocks:
                raise ValueError(
                    f"cannot concatenate Features of grid {item.grid} / {item.n_blocks} blocks "
                    f"with grid {first.grid} / {first.n_blocks} blocks"
                )
            if set(item.blocks) != set(first.blocks) or item.depth != first.depth:
                raise ValueError(
                    f"cannot concatenate Features holding blocks {sorted(item.blocks)} "
                    f"(depth {item.depth}) with Features holding {sorted(first.blocks)} "
                    f"(depth {first.depth})"
                )
            if (item.patch_tokens is None) != (first.patch_tokens is None) or (
                item.register_tokens is None
            ) != (first.register_tokens is None):
                raise ValueError("cannot concatenate Features that keep different tokens")

        def join(name: str) -> Any:
            values = [getattr(item, name) for item in items]
            if values[0] is None:
                return None
            if isinstance(values[0], tuple):
                return tuple(torch.cat(parts) for parts in zip(*values, strict=True))
            return torch.cat(values)

        blocks = {
            key: (
                torch.cat([item.blocks[key][0] for item in items]),
                torch.cat([item.blocks[key][1] for item in items]),
            )
            for key in first.blocks
        }
        return Features(
            class_tokens=join("class_tokens"),
            patch_tokens=join("patch_tokens"),
            patch_mean=join("patch_mean"),
            register_tokens=join("register_tokens"),
            grid=first.grid,
            blocks=blocks,
            depth=first.depth,
        )


def _grid_side(value: int | torch.SymInt) -> int:
    # Under torch.export the sides are symbolic (torch.SymInt); int() would fix them to the
    # traced size, so they stay as they are. Anything else (numpy or tensor ints) becomes int.
    return cast(int, value) if isinstance(value, torch.SymInt) else int(value)
