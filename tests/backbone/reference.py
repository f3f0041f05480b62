"""An independent, functional re-statement of the official DINOv2 forward pass.

Written directly from the official algorithm on a state dict, with explicit attention math and the
official (swapped) width/height naming of the position-embedding resize, so that the module code
is checked against something that shares none of its implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def interpolate_pos(
    pos_embed: Tensor, num_tokens: int, w: int, h: int, patch: int, offset: float, antialias: bool
) -> Tensor:
    # Official naming: "w" is the image height and "h" the width (B, nc, w, h = x.shape).
    npatch = num_tokens - 1
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    cls_pos = pos_embed[:, 0]
    patch_pos = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    m = int(math.sqrt(n))
    kwargs: dict[str, object] = {}
    if offset:
        kwargs["scale_factor"] = (float(w0 + offset) / m, float(h0 + offset) / m)
    else:
        kwargs["size"] = (w0, h0)
    grid = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)  # type: ignore[arg-type]
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos.unsqueeze(0), grid), dim=1)


def block(sd: dict[str, Tensor], i: int, x: Tensor, heads: int) -> Tensor:
    p = f"blocks.{i}."
    b, t, c = x.shape
    y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, t, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, t, c)
    y = y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    x = x + y * sd[p + "ls1.gamma"]
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    if p + "mlp.w12.weight" in sd:
        gate, value = (y @ sd[p + "mlp.w12.weight"].T + sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        y = (F.silu(gate) * value) @ sd[p + "mlp.w3.weight"].T + sd[p + "mlp.w3.bias"]
    else:
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        y = y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return x + y * sd[p + "ls2.gamma"]


def forward_all(
    sd: dict[str, Tensor],
    x: Tensor,
    *,
    heads: int,
    offset: float,
    antialias: bool,
    masks: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Tokens before the final norm and the (un-normed) output of every block."""
    patch = sd["patch_embed.proj.weight"].shape[-1]
    _, _, w, h = x.shape
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    if masks is not None:
        tokens = torch.where(masks.unsqueeze(-1), sd["mask_token"].unsqueeze(0), tokens)
    tokens = torch.cat((sd["cls_token"].expand(tokens.shape[0], -1, -1), tokens), dim=1)
    tokens = tokens + interpolate_pos(
        sd["pos_embed"], tokens.shape[1], w, h, patch, offset, antialias
    )
    if "register_tokens" in sd:
        regs = sd["register_tokens"].expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    outs = []
    for i in range(depth):
        tokens = block(sd, i, tokens, heads)
        outs.append(tokens)
    return tokens, outs


def final_norm(sd: dict[str, Tensor], x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
