"""The DINOv2 vision transformer, written to be a drop-in for the official model."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dinov2_heads.backbone.config import BackboneConfig, variant_name
from dinov2_heads.backbone.pos_resample import resample_pos_table
from dinov2_heads.backbone.tracing import is_tracing
from dinov2_heads.errors import Dinov2HeadsError
from dinov2_heads.layers import Block, Mlp, PatchEmbed, SwiGLUFFNFused

BlockSelection = int | Sequence[int]


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with the official parameter names, outputs and position-embedding resizing.

    An official ``*_pretrain.pth`` state dict loads with ``strict=True``. Inputs of any size whose
    sides are multiples of the patch size P work; the 37x37 position table is resized the way the
    official code does it for the variant (see :class:`BackboneConfig`).

    Build it from a config (``DinoVisionTransformer(get_config("dinov2_vits14"))``) or with keyword
    overrides (``DinoVisionTransformer(embed_dim=384, depth=2, num_heads=6)``); most users call
    :func:`~dinov2_heads.create_backbone` instead.

    Args:
        config: Architecture; defaults to ViT-B/14 settings.
        **overrides: Fields of :class:`BackboneConfig` to change.
    """

    def __init__(self, config: BackboneConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = (config or BackboneConfig()).replace(**overrides)
        self.config = config
        self.embed_dim = self.num_features = dim = config.embed_dim
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.n_blocks = config.depth
        self.num_heads = config.num_heads
        self.interpolate_antialias = config.interpolate_antialias
        self.interpolate_offset = config.interpolate_offset

        self.patch_embed = PatchEmbed(config.patch_size, 3, dim)
        grid = config.pos_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
            if config.num_register_tokens
            else None
        )
        hidden = int(dim * config.mlp_ratio)

        def feed_forward() -> nn.Module:
            if config.ffn_layer == "swiglufused":
                return SwiGLUFFNFused(dim, hidden, bias=config.ffn_bias)
            return Mlp(dim, hidden, bias=config.ffn_bias)

        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                feed_forward(),
                init_values=config.init_values,
                qkv_bias=config.qkv_bias,
                proj_bias=config.proj_bias,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.init_weights()

    @property
    def variant(self) -> str | None:
        """The official variant name of this architecture, or ``None`` for a custom one."""
        return variant_name(self.config)

    def init_weights(self) -> None:
        """Random initialisation as in the official code (for tests and training from scratch)."""
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ tokens

    def check_input(self, x: Tensor) -> None:
        """Raise unless ``x`` is a valid non-empty (B, 3, H, W) batch of float images.

        Raises:
            TypeError: Integer (e.g. ``uint8``) images, which must be normalised first.
            ValueError: Wrong shape, an empty batch or image, sides that are not multiples of
                P, or images on another device than the weights.
        """
        check_float_images(x, weights=self.pos_embed)
        if x.ndim != 4:
            raise ValueError(
                f"expected images of shape (B, 3, H, W), got a {x.ndim}-D tensor of shape "
                f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for one image"
            )
        batch, channels, height, width = x.shape
        if batch == 0:
            raise ValueError("got an empty batch (B = 0); pass at least one image")
        if channels != 3:
            raise ValueError(
                f"expected 3 colour channels, got {channels} (shape {tuple(x.shape)}); "
                "convert grey or RGBA images to RGB first"
            )
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of patch size {p}; resize to "
                f"{_nearest_multiple(height, p)}x{_nearest_multiple(width, p)} or pad"
            )

    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embeddings for an image of ``height`` x ``width`` pixels: (1, 1 + N, D).

        Follows the official resizing exactly (see :meth:`_resize_pos_table`). The stored table
        is returned as is when the patch count equals the table's and the image is square
        (518x518 for the released weights).
        """
        previous_dtype = x.dtype
        num_patches = x.shape[1] - 1
        num_positions = self.pos_embed.shape[1] - 1
        if not is_tracing() and num_patches == num_positions and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        side = math.isqrt(num_positions)
        # The official view: (1, S, S, D) permuted to (1, D, S, S), a channels-last layout.
        # PyTorch's CPU bicubic kernels depend on the layout: for a grid one patch wide, the
        # antialiased kernel of a contiguous table gives other (and wrong) numbers.
        table = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        table = self._resize_pos_table(table, height // self.patch_size, width // self.patch_size)
        patch_pos = rearrange(table, "1 d h w -> 1 (h w) d")
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(previous_dtype)

    def _resize_pos_table(self, table: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """The official bicubic resize of the table: (1, D, S, S) float32 -> (1, D, h, w).

        The plain models use ``scale_factor = (h + offset) / S`` and no antialias; the register
        models resize to the exact grid with antialias. Under ``torch.compile`` and
        ``torch.export`` (and so ONNX export) the same resampling is computed by
        :func:`~dinov2_heads.backbone.pos_resample.resample_pos_table`, which keeps h and w
        symbolic: one compiled graph serves every image size, and an exported graph takes any.
        """
        offset, antialias = self.interpolate_offset, self.interpolate_antialias
        if is_tracing():
            return resample_pos_table(table, grid_h, grid_w, offset=offset, antialias=antialias)
        if offset:
            side = table.shape[-1]
            scale = ((grid_h + offset) / side, (grid_w + offset) / side)
            return F.interpolate(table, scale_factor=scale, mode="bicubic", antialias=antialias)
        return F.interpolate(table, size=(grid_h, grid_w), mode="bicubic", antialias=antialias)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + R + N, D): class token, registers, then patch tokens.

        ``masks`` (B, N) bool replaces the chosen patches by ``mask_token`` before the position
        embeddings are added, as in DINOv2 training.
        """
        self.check_input(x)
        _, _, height, width = x.shape
        tokens = self.patch_embed(x)
        if masks is not None:
            if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
                got = masks.dtype if isinstance(masks, Tensor) else type(masks).__name__
                raise TypeError(
                    f"masks must be a bool tensor, got {got}; True marks the patches to replace "
                    "by mask_token (use masks.bool() or masks > 0)"
                )
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks must have shape (B, N) = {tuple(tokens.shape[:2])}, "
                    f"got {tuple(masks.shape)}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    # ------------------------------------------------------------------ outputs

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        """The official output dict.

        Returns:
            ``x_norm_clstoken`` (B, D), ``x_norm_regtokens`` (B, R, D), ``x_norm_patchtokens``
            (B, N, D), ``x_prenorm`` (B, 1 + R + N, D) before the final norm, and ``masks``.
        """
        tokens = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: BlockSelection = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Outputs of chosen blocks, in block order, with the official meaning.

        Args:
            x: Images (B, 3, H, W).
            n: The last ``n`` blocks (int) or these block indices (sequence; negative indices
                count from the end).
            reshape: Return patch tokens as (B, D, h, w) maps instead of (B, N, D).
            return_class_token: Return ``(patch_tokens, class_token)`` pairs.
            norm: Apply the final LayerNorm to each output.

        Returns:
            A tuple with one entry per chosen block, oldest first. Register tokens are dropped.
        """
        outputs = self.get_intermediate_tokens(x, n, norm=norm)
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            grid_h = x.shape[-2] // self.patch_size
            patches = [rearrange(p, "b (h w) d -> b d h w", h=grid_h).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        return tuple(patches)

    def get_intermediate_tokens(
        self, x: Tensor, n: BlockSelection = 1, *, norm: bool = True
    ) -> tuple[Tensor, ...]:
        """Every token of chosen blocks: (B, 1 + R + N, D) each, class token and registers kept.

        The sequence form behind :meth:`get_intermediate_layers`, for callers that also need
        the register tokens. ``n`` and ``norm`` mean the same; outputs come oldest block first.
        """
        taken = self._blocks_to_take(n)
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        # Blocks after the last one asked for cannot change the result, so they are skipped.
        for index, block in enumerate(self.blocks[: taken[-1] + 1]):
            tokens = block(tokens)
            if index in taken:
                outputs.append(self.norm(tokens) if norm else tokens)
        return tuple(outputs)

    def _blocks_to_take(self, n: BlockSelection) -> list[int]:
        depth = len(self.blocks)
        if isinstance(n, bool | str) or not isinstance(n, int | Sequence):
            raise TypeError(f"n must be an int or a sequence of block indices, got {n!r}")
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise ValueError(f"n must be between 1 and the depth {depth}, got {n}")
            return list(range(depth - n, depth))
        if len(n) == 0:
            raise ValueError("n is an empty sequence; pass at least one block index")
        taken: list[int] = []
        entries: Sequence[object] = n
        for entry in entries:
            if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
                raise TypeError(f"block indices must be ints, got {entry!r} in n={n!r}")
            index = int(entry)
            if not -depth <= index < depth:
                raise ValueError(
                    f"block index {index} is out of range for a backbone of depth {depth}"
                )
            block = index % depth
            # One output per index, as in the official code; a repeat would silently give fewer.
            if block in taken:
                raise ValueError(
                    f"block {block} is asked for twice in n={n!r} (negative indices count from "
                    f"the end of the {depth} blocks); list each block once"
                )
            taken.append(block)
        return sorted(taken)

    def forward(self, x: Tensor, *, is_training: bool = False) -> Tensor | dict[str, Any]:
        """The normalised class token (B, D), or the full output dict when ``is_training``."""
        features = self.forward_features(x)
        if is_training:
            return features
        return self.head(features["x_norm_clstoken"])


def check_float_images(x: Tensor, *, weights: Tensor | None = None) -> None:
    """The checks every entry point makes before a backbone sees ``x``; none reads a pixel.

    Args:
        x: Images, (B, 3, H, W) where the caller checks the shape.
        weights: A weight of the model that will run, whose device ``x`` must share.

    Raises:
        TypeError: Integer images: the backbone takes normalised float images.
        ValueError: An image side of 0 pixels, or images on another device than ``weights``
            (the ``meta`` device, which holds no values, included).
    """
    if not x.is_floating_point():
        raise TypeError(
            f"expected float images normalised with the ImageNet mean and std, got {x.dtype}; "
            "normalise them first with dinov2_heads.data.normalize(images) or load them "
            "through dinov2_heads.data.Preprocess"
        )
    if x.ndim == 4 and (x.shape[-2] == 0 or x.shape[-1] == 0):
        raise ValueError(
            f"images of {x.shape[-2]}x{x.shape[-1]} pixels (shape {tuple(x.shape)}) have no "
            "pixels to cut into patches; check the crop or resize that made them"
        )
    if weights is not None and x.device != weights.device:
        if x.is_meta:
            raise ValueError(
                f"the images are on the meta device, which holds shapes but no values, while "
                f"the backbone's weights are on {weights.device}; create the images on "
                f"{weights.device}, or build the backbone with device='meta' to work out shapes"
            )
        raise ValueError(
            f"the images are on {x.device} but the backbone's weights are on {weights.device}; "
            f"move the images with images.to({str(weights.device)!r}) or the backbone with "
            f".to({str(x.device)!r})"
        )


class NonFiniteInputError(Dinov2HeadsError, ValueError):
    """Images (or other inputs) hold NaN or infinity.

    Attributes:
        samples: The positions in the batch of the samples that do.
    """

    def __init__(self, message: str, samples: list[int]) -> None:
        super().__init__(message)
        self.samples = samples


def check_finite_images(x: Tensor, *, what: str = "images") -> None:
    """Raise :class:`NonFiniteInputError` when ``x`` holds NaN or infinity (one reduction).

    A non-finite pixel makes every output of the backbone NaN, and a head then still names a
    class. The check reads ``x`` once (on a GPU it waits for ``x`` to be ready); it is skipped
    for ``meta`` tensors and while ``torch.compile`` or ``torch.export`` traces, where values
    are not known.

    Args:
        x: (B, ...) images or other inputs.
        what: What ``x`` is, for the message.
    """
    if x.is_meta or not x.is_floating_point() or is_tracing():
        return
    if bool(torch.isfinite(x).all()):
        return
    # Only on failure: which samples, and how many values of each kind.
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.ndim > 1 else None
    samples = [] if finite is None else (~finite).nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in samples[:8]) + (", ..." if len(samples) > 8 else "")
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise NonFiniteInputError(
        f"the {what} hold {nan} NaN and {inf} infinite values"
        + (f" (samples {shown} of the batch)" if samples else "")
        + "; every output computed from them would be NaN. Check the image files and the "
        "preprocessing (a division by a zero std, an empty crop), or pass check_finite=False "
        "to let them through",
        samples,
    )


def _nearest_multiple(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)
