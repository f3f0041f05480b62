"""``FrozenBackbone``: a backbone that is never trained, turned into :class:`Features`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.backbone.vision_transformer import check_float_images
from dinov2_heads.features.features import Features

logger = logging.getLogger(__name__)

_STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BACKBONE_PREFIX = "backbone."

# (class tokens, patch tokens, register tokens) as the compiled or eager extraction returns them.
_Tokens = tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor | None]


class FrozenBackbone(nn.Module):
    """A frozen backbone that turns images (B, 3, H, W) into :class:`Features`.

    Safe to put inside a trainable model: its parameters never require gradients, it stays in
    eval mode whatever ``.train()`` is called on a parent, and it runs under ``torch.no_grad()``
    (not ``inference_mode``), so its outputs feed trainable heads without the "Inference tensors
    cannot be saved for backward" error.

    Its state dict keys are the backbone's own, without a prefix, so an official
    ``dinov2_vits14_pretrain.pth`` state dict loads with ``frozen.load_state_dict(sd)``, and
    checkpoints of a model holding it (``{"frozen.blocks.0.norm1.weight": ...}``) look like the
    backbone's. Parameters are still reached as ``frozen.backbone.<name>`` in Python.

    Args:
        backbone: Any module with the official ``get_intermediate_layers`` (our
            :class:`~dinov2_heads.DinoVisionTransformer` or the official ``dinov2`` model),
            with ``embed_dim`` and ``patch_size`` attributes.
        n_last_blocks: How many of the last blocks to return (4 for the official linear4 heads).
        dtype: Store the frozen weights in this dtype once (``torch.bfloat16`` or
            ``torch.float16``) instead of autocasting on every call; inputs are cast to it and
            features come out as float32. ``None`` keeps the backbone's dtype. On a GPU this,
            uncompiled, is the fastest way to run the backbone (its GPU fast path, see
            :func:`~dinov2_heads.plain_kernels`).
        compile: ``True`` compiles the token extraction with ``torch.compile``. The batch
            dimension is dynamic, so a new batch size does not recompile; the first image size
            is compiled as is, and a second size compiles one graph with dynamic height and
            width that serves every later size (two compilations in all). A mapping is passed to
            ``torch.compile`` as keyword arguments (for example ``{"mode": "max-autotune"}``).

    Example:
        >>> from dinov2_heads import create_backbone
        >>> frozen = FrozenBackbone(create_backbone("dinov2_vits14", depth=1), n_last_blocks=1)
        >>> frozen(torch.randn(2, 3, 28, 42)).grid
        (2, 3)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_last_blocks: int = 1,
        dtype: torch.dtype | None = None,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "get_intermediate_layers", None)):
            raise TypeError(
                f"FrozenBackbone needs a backbone with the official get_intermediate_layers "
                f"method, got {type(backbone).__name__}; build one with "
                "dinov2_heads.create_backbone(...) or pass the official DINOv2 model"
            )
        embed_dim = getattr(backbone, "embed_dim", None)
        patch_size = getattr(backbone, "patch_size", None)
        if not isinstance(embed_dim, int) or not isinstance(patch_size, int):
            raise TypeError(
                f"FrozenBackbone needs int backbone.embed_dim and backbone.patch_size, "
                f"{type(backbone).__name__} has {embed_dim!r} and {patch_size!r}"
            )
        if isinstance(n_last_blocks, bool) or not isinstance(n_last_blocks, int):
            raise TypeError(f"n_last_blocks must be an int, got {n_last_blocks!r}")
        depth = _depth(backbone)
        if n_last_blocks < 1 or (depth is not None and n_last_blocks > depth):
            limit = f"the depth {depth}" if depth is not None else "the backbone's depth"
            raise ValueError(f"n_last_blocks must be between 1 and {limit}, got {n_last_blocks}")
        if dtype is not None and dtype not in _STORAGE_DTYPES:
            raise ValueError(
                f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}"
            )
        if not isinstance(compile, bool | Mapping):
            raise TypeError(
                f"compile must be a bool or a mapping of torch.compile options, got {compile!r}"
            )

        self.backbone = backbone
        self.n_last_blocks = n_last_blocks
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        backbone.requires_grad_(False)
        if dtype is not None:
            backbone.to(dtype)
        self._compile_options: dict[str, Any] | None = (
            (dict(compile) if isinstance(compile, Mapping) else {}) if compile else None
        )
        self._compiled: Callable[[Tensor], _Tokens] | None = None
        self._first_grid: tuple[int, int] | None = None
        self.register_state_dict_post_hook(_strip_backbone_prefix)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_add_backbone_prefix)  # type: ignore[no-untyped-call]
        self.train(False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen weights are stored in (inputs are cast to it)."""
        for param in self.backbone.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    @property
    def num_register_tokens(self) -> int:
        """R, the number of register tokens the backbone has (0 when none)."""
        return int(getattr(self.backbone, "num_register_tokens", 0) or 0)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode: a frozen backbone has no train-time behaviour to switch on."""
        return super().train(False)

    def forward(self, x: Tensor) -> Features:
        """Features of the last ``n_last_blocks`` blocks.

        Args:
            x: Images (B, 3, H, W) with H and W multiples of the patch size.

        Returns:
            :class:`Features` in float32: ``class_tokens`` n x (B, D), ``patch_tokens``
            n x (B, N, D), ``patch_mean`` (B, D), ``register_tokens`` (B, R, D) when the backbone
            is a :class:`~dinov2_heads.DinoVisionTransformer` with registers, and the grid (h, w).
        """
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected images of shape (B, 3, H, W), got {shape}; "
                "add a batch dimension with x.unsqueeze(0) for one image"
            )
        check_float_images(x)  # before the cast below would turn pixels 0..255 into floats
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = x.to(self.dtype)
        with torch.no_grad():
            if self._compile_options is not None:
                self._mark_dynamic(x, grid)
                class_tokens, patch_tokens, registers = self._compiled_tokens()(x)
            else:
                class_tokens, patch_tokens, registers = self._tokens(x)
        return Features.from_tokens(
            [t.float() for t in class_tokens],
            [t.float() for t in patch_tokens],
            grid,
            register_tokens=registers.float() if registers is not None else None,
        )

    def extra_repr(self) -> str:
        return f"n_last_blocks={self.n_last_blocks}, dtype={self.dtype}"

    # ------------------------------------------------------------------ internals

    def _mark_dynamic(self, x: Tensor, grid: tuple[int, int]) -> None:
        # A dynamic batch dimension from the first call on: one graph serves every batch size
        # (B = 1 aside, which torch specialises once). The first image size is compiled static,
        # the fastest code for the common single-size run; the first other size compiles one
        # graph with dynamic height and width, which then serves every size.
        torch._dynamo.maybe_mark_dynamic(x, 0)
        if self._first_grid is None:
            self._first_grid = grid
        elif grid != self._first_grid:
            torch._dynamo.maybe_mark_dynamic(x, 2)
            torch._dynamo.maybe_mark_dynamic(x, 3)

    def _compiled_tokens(self) -> Callable[[Tensor], _Tokens]:
        if self._compiled is None:
            logger.info(
                "compiling the frozen backbone with %s", self._compile_options or "defaults"
            )
            self._compiled = torch.compile(self._tokens, **(self._compile_options or {}))
        return self._compiled

    def _tokens(self, x: Tensor) -> _Tokens:
        if isinstance(self.backbone, DinoVisionTransformer):
            return _tokens_with_registers(self.backbone, x, self.n_last_blocks)
        get_intermediate_layers = cast(Callable[..., Any], self.backbone.get_intermediate_layers)
        outputs = get_intermediate_layers(x, n=self.n_last_blocks, return_class_token=True)
        return tuple(c for _, c in outputs), tuple(p for p, _ in outputs), None


def _tokens_with_registers(model: DinoVisionTransformer, x: Tensor, n: int) -> _Tokens:
    # get_intermediate_layers drops the register tokens; the full sequences keep them, in the
    # official order [class, registers (R), patches (N)].
    outputs = model.get_intermediate_tokens(x, n)
    r = model.num_register_tokens
    return (
        tuple(out[:, 0] for out in outputs),
        tuple(out[:, 1 + r :] for out in outputs),
        outputs[-1][:, 1 : 1 + r] if r else None,
    )


def _depth(backbone: nn.Module) -> int | None:
    depth = getattr(backbone, "n_blocks", None)
    if isinstance(depth, int):
        return depth
    blocks = getattr(backbone, "blocks", None)
    return len(blocks) if isinstance(blocks, nn.ModuleList) else None


def _strip_backbone_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    # The backbone's keys were just appended last, so re-inserting them keeps the order.
    inner = prefix + _BACKBONE_PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_backbone_prefix(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # load_state_dict hands each module its own copy of the dict, so renaming in place is safe.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + _BACKBONE_PREFIX + key[len(prefix) :]] = state_dict.pop(key)
