"""The backbone architecture that official-layout weights were made for, read from shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import Tensor

from dinov2_heads.backbone.config import VARIANTS, BackboneConfig, FfnLayer, variant_name
from dinov2_heads.checkpoints.errors import ArchitectureMismatchError, CheckpointError
from dinov2_heads.layers.swiglu import swiglu_hidden_features

#: Every official DINOv2 model uses 64-wide attention heads; the weights cannot tell the count.
HEAD_WIDTH = 64

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
#: What the weights decide, so what a requested architecture is compared on (not the head
#: count: the weights do not know it).
_COMPARED = ("embed_dim", "depth", "ffn_layer", "mlp_ratio", "num_register_tokens", "patch_size")

#: The way out of every misfit between weights and an architecture asked for by name.
REBUILD_HINT = "load_backbone(path) without variant= builds the architecture of the weights"


def infer_config(
    state_dict: Mapping[str, Tensor], *, num_heads: int | None = None
) -> BackboneConfig:
    """Width, depth, registers, FFN type, patch size and position grid from tensor shapes.

    The number of attention heads leaves no trace in the weights; unless given, it is taken as
    D / 64, the head width of every official variant. The position-embedding interpolation
    follows the official family: the register models resize with antialias to the exact grid,
    the others with the +0.1 offset.

    Args:
        state_dict: Official-layout backbone weights.
        num_heads: The head count, when the heads are not 64 wide.

    Returns:
        The configuration (``img_size`` from the stored position grid, e.g. 518 for 37x37).

    Raises:
        CheckpointError: A tensor the architecture needs is absent or has an impossible shape.
    """
    patch = _get(state_dict, "patch_embed.proj.weight", ndim=4)
    embed_dim, channels, patch_h, patch_w = patch.shape
    if channels != 3 or patch_h != patch_w:
        raise CheckpointError(
            f"patch_embed.proj.weight has shape {tuple(patch.shape)}; expected (D, 3, P, P)"
        )
    depth = _depth(state_dict)
    pos_embed = _get(state_dict, "pos_embed", ndim=3)
    grid = math.isqrt(pos_embed.shape[1] - 1)
    if pos_embed.shape[1] < 2 or grid * grid != pos_embed.shape[1] - 1:
        raise CheckpointError(
            f"pos_embed has {pos_embed.shape[1]} positions; expected 1 + a square grid "
            "(1 + 37 * 37 = 1370 for the released weights)"
        )
    registers = state_dict.get("register_tokens")
    num_registers = 0 if registers is None else int(registers.shape[1])
    ffn_layer, mlp_ratio = _feed_forward(state_dict, embed_dim)
    if num_heads is None and embed_dim % HEAD_WIDTH:
        raise CheckpointError(
            f"width D = {embed_dim} is not a multiple of {HEAD_WIDTH}, so the number of "
            "attention heads cannot be assumed; pass num_heads=..."
        )
    family = VARIANTS["dinov2_vits14_reg" if num_registers else "dinov2_vits14"]
    return BackboneConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or embed_dim // HEAD_WIDTH,
        mlp_ratio=mlp_ratio,
        ffn_layer=ffn_layer,
        num_register_tokens=num_registers,
        interpolate_antialias=family.interpolate_antialias,
        interpolate_offset=family.interpolate_offset,
        patch_size=patch_h,
        img_size=grid * patch_h,
        init_values=1.0 if "blocks.0.ls1.gamma" in state_dict else None,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        proj_bias="blocks.0.attn.proj.bias" in state_dict,
        ffn_bias="blocks.0.mlp.fc1.bias" in state_dict or "blocks.0.mlp.w12.bias" in state_dict,
    )


def check_variant(inferred: BackboneConfig, name: str, requested: BackboneConfig) -> None:
    """Raise when the weights' architecture differs from the one asked for.

    The head count is not compared: the weights do not know it. Feed-forward networks are
    compared by their hidden width, which is what the weights hold.

    Args:
        inferred: The architecture read from the weights (:func:`infer_config`).
        name: The variant asked for, as the message should name it.
        requested: Its configuration, with any changes asked for.

    Raises:
        ArchitectureMismatchError: Names what differs on both sides and what the weights are.
    """
    differ = [f for f in _COMPARED if getattr(inferred, f) != getattr(requested, f)]
    if "mlp_ratio" in differ and ffn_width(inferred) == ffn_width(requested):
        differ.remove("mlp_ratio")  # Another ratio that gives the same hidden width.
    if differ:
        got = ", ".join(f"{f}={getattr(inferred, f)!r}" for f in differ)
        want = ", ".join(f"{f}={getattr(requested, f)!r}" for f in differ)
        found = variant_name(inferred) or "a custom architecture"
        raise ArchitectureMismatchError(
            f"the weights do not fit {name}: the model asked for has {want}, the weights have "
            f"{got} (they are {found}: {describe_config(inferred, heads=False)}); "
            f"{REBUILD_HINT}"
        )


def describe_config(config: BackboneConfig, *, heads: bool = True) -> str:
    """A short readable form, e.g. ``D=384, depth=12, heads=6, mlp, 0 registers, 37x37 grid``."""
    return (
        f"D={config.embed_dim}, depth={config.depth}, "
        + (f"heads={config.num_heads}, " if heads else "")
        + f"{config.ffn_layer}, {config.num_register_tokens} registers, "
        f"{config.pos_grid}x{config.pos_grid} grid"
    )


def ffn_width(config: BackboneConfig) -> int:
    """The hidden width of the feed-forward networks (the fused SwiGLU rounds it)."""
    hidden = int(config.embed_dim * config.mlp_ratio)
    return swiglu_hidden_features(hidden) if config.ffn_layer == "swiglufused" else hidden


def _get(state_dict: Mapping[str, Tensor], name: str, *, ndim: int) -> Tensor:
    tensor = state_dict.get(name)
    if tensor is None:
        raise CheckpointError(f"the backbone weights have no {name!r}")
    if tensor.ndim != ndim:
        raise CheckpointError(f"{name} should be {ndim}-D, got shape {tuple(tensor.shape)}")
    return tensor


def _depth(state_dict: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := _BLOCK_INDEX.match(key))}
    if not indices:
        raise CheckpointError("the backbone weights have no blocks.{i}.* tensors")
    depth = max(indices) + 1
    absent = sorted(set(range(depth)) - indices)
    if absent:
        raise CheckpointError(f"blocks {absent[:5]} are absent from the weights (depth {depth})")
    return depth


def _feed_forward(state_dict: Mapping[str, Tensor], dim: int) -> tuple[FfnLayer, float]:
    """The FFN type and the ``mlp_ratio`` that rebuilds its hidden width (4.0 when it does)."""
    w12 = state_dict.get("blocks.0.mlp.w12.weight")
    if w12 is not None:
        hidden = w12.shape[0] // 2
        if swiglu_hidden_features(int(dim * 4.0)) == hidden:
            return "swiglufused", 4.0
        # The fused SwiGLU keeps 2/3 of the requested width, rounded up to a multiple of 8.
        for requested in range(hidden * 3 // 2 - 12, hidden * 3 // 2 + 13):
            ratio = requested / dim
            if requested > 0 and swiglu_hidden_features(int(dim * ratio)) == hidden:
                return "swiglufused", ratio
        raise CheckpointError(
            f"blocks.0.mlp.w12 has a hidden width of {hidden}, which the fused SwiGLU "
            "(multiples of 8) cannot produce"
        )
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    if fc1 is None or fc1.ndim != 2:
        raise CheckpointError("the backbone weights have neither blocks.0.mlp.fc1 nor mlp.w12")
    hidden = fc1.shape[0]
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = math.nextafter(ratio, math.inf)
    return "mlp", ratio
