"""``Features``: what a frozen backbone hands to the heads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import Tensor


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
            only pooled features were kept (a compact cache). Heads that need every patch token,
            such as ``Conv1dNeck``, raise a clear error then.
        patch_mean: (B, D) mean over the N patch tokens of the last block (the official
            ``avgpool`` input).
        register_tokens: (B, R, D) register tokens of the last block, or ``None`` when the
            backbone has none or they were not kept.
        grid: The patch grid (h, w) = (H / 14, W / 14).
    """

    class_tokens: tuple[Tensor, ...]
    patch_tokens: tuple[Tensor, ...] | None
    patch_mean: Tensor
    register_tokens: Tensor | None
    grid: tuple[int, int]

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

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tokens(
        cls,
        class_tokens: Sequence[Tensor],
        patch_tokens: Sequence[Tensor],
        grid: tuple[int, int],
        register_tokens: Tensor | None = None,
    ) -> Features:
        """Features from per-block class tokens (B, D) and patch tokens (B, N, D)."""
        patches = tuple(patch_tokens)
        return cls(
            class_tokens=tuple(class_tokens),
            patch_tokens=patches,
            patch_mean=patches[-1].mean(dim=1),
            register_tokens=register_tokens,
            grid=(int(grid[0]), int(grid[1])),
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
                f"{who} needs every patch token, but these Features hold only pooled tokens "
                "(a compact cache); extract with the patch tokens kept"
            )
        return self.patch_tokens

    def patch_map(self, block: int = -1) -> Tensor:
        """Patch tokens of one block as a (B, D, h, w) map."""
        tokens = self.require_patch_tokens("patch_map")[block]
        return rearrange(tokens, "b (h w) d -> b d h w", h=self.grid[0])

    # ------------------------------------------------------------------ tensor ops

    def apply(self, fn: Any) -> Features:
        """A copy with ``fn`` applied to every tensor."""

        def each(value: Any) -> Any:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
                return tuple(fn(v) for v in value)
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

        return Features(
            class_tokens=join("class_tokens"),
            patch_tokens=join("patch_tokens"),
            patch_mean=join("patch_mean"),
            register_tokens=join("register_tokens"),
            grid=first.grid,
        )
