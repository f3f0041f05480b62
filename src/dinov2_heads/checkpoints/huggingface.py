"""Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` weights -> the official layout."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from dinov2_heads.checkpoints.errors import CheckpointError

#: Names outside the blocks: Hugging Face name -> official name.
_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}

#: Names inside block i (after ``encoder.layer.{i}.``) that only change name. Files written by
#: transformers (any version) use the first spelling of attention and SwiGLU layers; the modules
#: of transformers 5 use ``q_proj`` ... ``o_proj`` and ``gate_proj`` / ``up_proj`` / ``down_proj``
#: in memory, so a ``state_dict()`` taken from a live model has those.
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}

#: Separate tensors fused into one official tensor by stacking rows, in the official order.
_FUSED = {
    "attn.qkv": (
        ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ),
    # The official SwiGLU splits w12's output into (gate, value) halves in this order.
    "mlp.w12": (("mlp.gate_proj", "mlp.up_proj"),),
}

_BLOCK_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def is_huggingface_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the names are those of a Hugging Face DINOv2 model."""
    return any(key.startswith(("embeddings.", "encoder.layer.")) for key in state_dict)


def convert_huggingface(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename and fuse Hugging Face DINOv2 weights into the official layout.

    Pure: the input is not changed and tensors are shared where no fusing is needed. The
    separate query/key/value projections become one ``attn.qkv`` (rows stacked q, k, v); the
    SwiGLU ``gate_proj``/``up_proj`` pair becomes ``mlp.w12`` (``weights_in`` already is).
    A missing ``embeddings.mask_token`` (``use_mask_token=False``) becomes zeros, as it only
    matters for masked training. Names the function does not know are passed through unchanged,
    so the caller can report them.

    Args:
        state_dict: A ``Dinov2Model`` or ``Dinov2WithRegistersModel`` state dict (without the
            ``dinov2.`` prefix of the task models).

    Returns:
        The official-layout state dict.

    Raises:
        CheckpointError: A fused group is incomplete (e.g. a query without its key).
    """
    out: dict[str, Tensor] = {}
    groups: dict[tuple[int, str, str], dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        if key in _EMBEDDINGS:
            out[_EMBEDDINGS[key]] = tensor
            continue
        found = _BLOCK_KEY.match(key)
        if found is None:
            out[key] = tensor
            continue
        index, inner, leaf = int(found.group(1)), found.group(2), found.group(3)
        if leaf == "lambda1":
            inner, leaf = f"{inner}.lambda1", ""
        target = _BLOCK_RENAMES.get(inner)
        if target is not None:
            out[_block_name(index, target, leaf)] = tensor
            continue
        fused = _fused_target(inner)
        if fused is None:
            out[key] = tensor
            continue
        groups.setdefault((index, fused, leaf), {})[inner] = tensor
    for (index, fused, leaf), parts in sorted(groups.items()):
        out[_block_name(index, fused, leaf)] = _fuse(index, fused, leaf, parts)
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out


def _block_name(index: int, name: str, leaf: str) -> str:
    return f"blocks.{index}.{name}" + (f".{leaf}" if leaf else "")


def _fused_target(inner: str) -> str | None:
    for target, spellings in _FUSED.items():
        if any(inner in names for names in spellings):
            return target
    return None


def _fuse(index: int, fused: str, leaf: str, parts: dict[str, Tensor]) -> Tensor:
    for names in _FUSED[fused]:
        if any(name in parts for name in names):
            absent = [name for name in names if name not in parts]
            if absent:
                raise CheckpointError(
                    f"block {index} has {sorted(parts)} ({leaf}) but not {absent}; the Hugging "
                    "Face checkpoint is incomplete"
                )
            # Rows of the fused projection are the separate projections stacked in order.
            return torch.cat([parts[name] for name in names], dim=0)
    raise AssertionError(f"no spelling of {fused} in {sorted(parts)}")
