"""Tiny backbones and writers for each checkpoint layout, shared by the checkpoint tests."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from dinov2_heads import DinoVisionTransformer, create_backbone
from tests.helpers import randomize

#: 128 wide with 2 heads keeps the official 64-wide heads, so the head count is inferred right.
TINY = {"depth": 2, "embed_dim": 128, "num_heads": 2}


def tiny_backbone(
    *, registers: bool = False, swiglu: bool = False, seed: int = 0, **overrides: object
) -> DinoVisionTransformer:
    """A 2-block, 128-wide backbone with non-trivial random weights everywhere."""
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    settings: dict[str, object] = {**TINY, **overrides}
    if swiglu:
        settings["ffn_layer"] = "swiglufused"
    return randomize(create_backbone(name, **settings), seed)


def images(size: tuple[int, int] = (518, 518), batch: int = 1, seed: int = 7) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def tokens(model: DinoVisionTransformer, x: Tensor) -> Tensor:
    """All normalised output tokens (B, 1 + R + N, D), the form other libraries return."""
    with torch.no_grad():
        out = model.forward_features(x)
    return torch.cat(
        (out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]),
        dim=1,
    )


def hf_model(
    *,
    registers: bool,
    swiglu: bool = False,
    seed: int = 0,
    size: int = 70,
    hidden_size: int = 128,
    num_heads: int = 2,
    depth: int = 2,
) -> Any:
    """A tiny Hugging Face model, built from a config (nothing downloaded), random weights.

    ``size`` is the image side its position table is made for: the released models use 518
    (37x37); most tests use a 5x5 table, which exercises the same code path faster.
    """
    import transformers

    settings = {
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "num_attention_heads": num_heads,
        "image_size": size,
        "patch_size": 14,
        "use_swiglu_ffn": swiglu,
    }
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **settings)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**settings))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("lambda1"):
                param.copy_(0.5 + 0.2 * noise)
            elif param.ndim <= 1 or ("embeddings." in name and "patch" not in name):
                param.copy_(0.05 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model.eval()


def hf_tokens(model: Any, x: Tensor) -> Tensor:
    """Hugging Face's output tokens (B, 1 + R + N, D)."""
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state


# ---------------------------------------------------------------- foreign layouts, written here
# These follow the documented layouts of the other libraries, independently of the converters.


def official_to_huggingface(state: dict[str, Tensor], *, live: bool = False) -> dict[str, Tensor]:
    """The Hugging Face Dinov2Model layout: files (``live=False``) or transformers-5 modules."""
    out: dict[str, Tensor] = {}
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    attention = "attention.{}_proj" if live else "attention.attention.{}"
    names = ("q", "k", "v") if live else ("query", "key", "value")
    for key, tensor in state.items():
        if key in top:
            out[top[key]] = tensor
            continue
        found = re.match(r"blocks\.(\d+)\.(.+)$", key)
        assert found, key
        layer, rest = f"encoder.layer.{found.group(1)}.", found.group(2)
        if rest.startswith("attn.qkv."):
            leaf = rest.rsplit(".", 1)[1]
            for name, part in zip(names, tensor.chunk(3, dim=0), strict=True):
                out[f"{layer}{attention.format(name)}.{leaf}"] = part
        elif rest.startswith("mlp.w12.") and live:
            leaf = rest.rsplit(".", 1)[1]
            gate, up = tensor.chunk(2, dim=0)
            out[f"{layer}mlp.gate_proj.{leaf}"] = gate
            out[f"{layer}mlp.up_proj.{leaf}"] = up
        else:
            renames = {
                "attn.proj.": "attention.o_proj." if live else "attention.output.dense.",
                "ls1.gamma": "layer_scale1.lambda1",
                "ls2.gamma": "layer_scale2.lambda1",
                "mlp.w12.": "mlp.weights_in.",
                "mlp.w3.": "mlp.down_proj." if live else "mlp.weights_out.",
            }
            for old, new in renames.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            out[layer + rest] = tensor
    return out


def official_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """What timm's checkpoint filter for DINOv2 makes of official weights.

    ``mask_token`` is dropped; with registers, ``reg_token`` holds them, the class-token position
    embedding is added to ``cls_token`` and ``pos_embed`` keeps the patch positions only; SwiGLU
    ``w12``/``w3`` are renamed ``fc1``/``fc2``.
    """
    out = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return {
        re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v
        for k, v in out.items()
    }
