"""Where the class token looks: its attention probabilities over the tokens of one block.

The backbone's attention runs through ``scaled_dot_product_attention``, which never forms the
probabilities. They are computed here on request, from the same ``norm1`` and ``qkv`` modules the
block runs, so the fast path stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.backbone.vision_transformer import check_float_images
from dinov2_heads.features.frozen import FrozenBackbone

__all__ = ["ClassAttention", "attention_maps", "class_attention"]


@dataclass(frozen=True)
class ClassAttention:
    """The class token's attention in one block, split by the kind of token attended to.

    The probabilities are the softmax over all 1 + R + N tokens, so ``to_class``,
    ``to_registers`` and ``patches`` together sum to 1 for each image and head; nothing is
    renormalised when the registers are left out of the map.

    Attributes:
        patches: (B, heads, h, w) attention to each patch.
        to_registers: (B, heads, R) attention to each register token (R may be 0).
        to_class: (B, heads) attention of the class token to itself.
        block: The absolute index of the block.
    """

    patches: Tensor
    to_registers: Tensor
    to_class: Tensor
    block: int


def _unwrap(backbone: nn.Module) -> DinoVisionTransformer:
    model = backbone.backbone if isinstance(backbone, FrozenBackbone) else backbone
    if not isinstance(model, DinoVisionTransformer):
        raise TypeError(
            "attention maps need a DinoVisionTransformer or a FrozenBackbone around one, got "
            f"{type(model).__name__}; load the backbone with dinov2_heads.load_backbone"
        )
    return model


def class_attention(backbone: nn.Module, images: Tensor, *, block: int = -1) -> ClassAttention:
    """The class token's attention probabilities in ``block`` for images (B, 3, H, W).

    Args:
        backbone: A :class:`~dinov2_heads.DinoVisionTransformer` or a ``FrozenBackbone``.
        images: Normalised images (B, 3, H, W), sides multiples of the patch size; with a
            ``FrozenBackbone``, also ``uint8`` pixels 0..255, which it normalises with its
            ``mean`` and ``std`` as it does for features.
        block: Block index, negative counting from the end (-1: the last block).

    Returns:
        A :class:`ClassAttention` in float32.

    Raises:
        TypeError: Images that are not a tensor; integer images for a bare backbone (or other
            than ``uint8`` for a ``FrozenBackbone``): they are never cast to float unnormalised.
        ValueError: Another shape (the backbone's checks), a block out of range, or NaN / inf
            pixels.
    """
    model = _unwrap(backbone)
    if not isinstance(images, Tensor):
        raise TypeError(
            f"expected images as a (B, 3, H, W) tensor, got {type(images).__name__}; convert "
            "with torch.as_tensor (or torch.stack a list of (3, H, W) images)"
        )
    depth = len(model.blocks)
    if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth:
        raise ValueError(f"block must be an int in [-{depth}, {depth}), got {block!r}")
    index = block % depth
    dtype = next(model.parameters()).dtype
    if isinstance(backbone, FrozenBackbone) and images.dtype == torch.uint8:
        images = backbone.prepare_images(images)
    else:
        # Before the cast below would turn pixels 0..255 into floats.
        check_float_images(images, weights=next(model.parameters()))
    if images.device.type != "meta" and not bool(torch.isfinite(images).all()):
        # A NaN pixel spreads through attention to the whole map of its image.
        raise ValueError(
            "the images hold NaN or inf values, which would make every map of their image NaN; "
            "check how they were loaded and normalised"
        )
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(images.to(dtype))
        for earlier in model.blocks[:index]:
            tokens = earlier(tokens)
        # Any block module (plain or swapped for a faster one) has norm1 and attn.qkv.
        layer: Any = model.blocks[index]
        heads = layer.attn.num_heads
        qkv = layer.attn.qkv(layer.norm1(tokens)).float()
        q, k = rearrange(qkv, "b t (three n e) -> three b n t e", three=3, n=heads)[:2]
        # The class token's query (position 0) against every key, scaled as the block scales it.
        logits = torch.einsum("bne,bnte->bnt", q[:, :, 0], k) * q.shape[-1] ** -0.5
        probabilities = logits.softmax(dim=-1)  # (B, heads, 1 + R + N)
    r = model.num_register_tokens
    grid_h = images.shape[-2] // model.patch_size
    return ClassAttention(
        patches=rearrange(probabilities[:, :, 1 + r :], "b n (h w) -> b n h w", h=grid_h),
        to_registers=probabilities[:, :, 1 : 1 + r],
        to_class=probabilities[:, :, 0],
        block=index,
    )


def attention_maps(backbone: nn.Module, images: Tensor, *, block: int = -1) -> Tensor:
    """(B, heads, h, w): the class token's attention to each patch in ``block``.

    The softmax runs over all tokens (class, registers, patches), and the map keeps the patch
    part without renormalising: where a model with registers parks attention on its registers,
    the map is dimmer. :func:`class_attention` gives the register and class parts too.
    """
    return class_attention(backbone, images, block=block).patches
