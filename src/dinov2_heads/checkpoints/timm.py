"""timm DINOv2 weights (``vit_*_patch14_dinov2``, ``vit_*_patch14_reg4_dinov2``) -> official layout.

timm keeps the official block names but stores the models differently:

- ``mask_token`` is dropped (it only matters for masked training).
- ViT-g's fused SwiGLU is ``mlp.fc1`` (the official ``w12``, gate rows first) and ``mlp.fc2``
  (the official ``w3``).
- The register models have no position embedding for the class token: timm adds it to
  ``cls_token`` once and stores ``reg_token`` and a ``pos_embed`` for the patches only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from dinov2_heads.checkpoints.errors import CheckpointError

_MLP_KEY = re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$")


def is_timm_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the names are those of a timm DINOv2 model (official names, no ``mask_token``)."""
    if "reg_token" in state_dict:
        return True
    return "mask_token" not in state_dict and "cls_token" in state_dict


def convert_timm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert timm DINOv2 weights into the official layout.

    Pure: the input is not changed. For the register models the official class-token position
    embedding is set to zero, because timm already added it to ``cls_token``; the official model
    adds ``pos_embed[:, 0]`` to the class token only, so its outputs are unchanged at every input
    size. ``mask_token`` becomes zeros. Names the function does not know are passed through.

    Args:
        state_dict: A timm ``VisionTransformer`` state dict of a DINOv2 model.

    Returns:
        The official-layout state dict.

    Raises:
        CheckpointError: ``reg_token`` is present without ``cls_token`` / ``pos_embed``, or
            ``pos_embed`` is not (1, N, D).
    """
    out = dict(state_dict)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        missing = [name for name in ("cls_token", "pos_embed") if name not in out]
        if missing:
            raise CheckpointError(f"a timm register model needs {missing} next to 'reg_token'")
        pos_embed = out["pos_embed"]
        if pos_embed.ndim != 3:
            raise CheckpointError(
                f"pos_embed should have shape (1, N, D), got {tuple(pos_embed.shape)}"
            )
        # timm's register models store no class-token position; prepend a zero one.
        zero = torch.zeros_like(pos_embed[:, :1])
        out["pos_embed"] = torch.cat((zero, pos_embed), dim=1)
    if _is_packed_swiglu(out):
        out = {_swiglu_name(key): value for key, value in out.items()}
    if "mask_token" not in out and "cls_token" in out:
        cls_token = out["cls_token"]
        out["mask_token"] = torch.zeros(1, cls_token.shape[-1], dtype=cls_token.dtype)
    return out


def _is_packed_swiglu(state_dict: Mapping[str, Tensor]) -> bool:
    """timm's packed SwiGLU: fc1 gives twice the hidden width that fc2 takes in."""
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    fc2 = state_dict.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None or fc1.ndim != 2 or fc2.ndim != 2:
        return False
    return fc1.shape[0] == 2 * fc2.shape[1]


def _swiglu_name(key: str) -> str:
    found = _MLP_KEY.match(key)
    if found is None:
        return key
    index, layer, leaf = found.groups()
    return f"blocks.{index}.mlp.{'w12' if layer == 'fc1' else 'w3'}.{leaf}"
