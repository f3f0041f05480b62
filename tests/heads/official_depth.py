"""The official depth heads restated from ``dinov2/hub/depth`` for the tests, and the fixtures.

The functions below follow the official code step by step (``BNHead`` in classify mode,
``DPTHead`` with ``readout_type="project"``, ``DepthEncoderDecoder`` and the hub's
``CenterPadding``), working from a state dict with plain ``torch.nn.functional`` calls, so the
library's modules are checked against an independent statement of the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import DinoVisionTransformer, create_backbone

#: Official dense-head outputs beside the repository (see its README).
DENSE_FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "dinov2_dense"
#: The blocks the hub reads on ViT-S for each fixture head.
FIXTURE_BLOCKS = {"linear1": [11], "linear4": [2, 5, 8, 11], "dpt": [2, 5, 8, 11]}

Blocks = Sequence[tuple[Tensor, Tensor]]


def dense_fixtures() -> Path:
    if not DENSE_FIXTURES.is_dir():
        pytest.skip(f"dense reference fixtures not found at {DENSE_FIXTURES.resolve()}")
    return DENSE_FIXTURES


def fixture_backbone() -> DinoVisionTransformer:
    """The fixtures' ViT-S/14 in float32 (its float16 weights upcast, as the references were)."""
    state = torch.load(dense_fixtures() / "vits14_backbone_fp16.pth", weights_only=True)
    backbone = create_backbone("dinov2_vits14", device="meta")
    backbone.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return backbone.eval()


def fixture_head_state(name: str) -> dict[str, Tensor]:
    """The fixture head's weights in float32, without the ``decode_head.`` prefix."""
    path = dense_fixtures() / f"vits14_depth_{name}_head.pth"
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k.removeprefix("decode_head."): v.float() for k, v in state.items()}


# ---------------------------------------------------------------------------- heads


def official_linear(sd: Mapping[str, Tensor], blocks: Blocks, lo: float, hi: float) -> Tensor:
    """BNHead(classify=True, upsample=4, resize_concat, norm_strategy="linear", bins "UD")."""
    inputs = [torch.cat((x, c[:, :, None, None].expand_as(x)), 1) for x, c in blocks]
    size = [s * 4 for s in inputs[0].shape[2:]]
    feat = torch.cat(
        [F.interpolate(x, size, mode="bilinear", align_corners=False) for x in inputs], 1
    )
    logit = F.conv2d(feat, sd["conv_depth.weight"], sd["conv_depth.bias"])
    bins = torch.linspace(lo, hi, logit.shape[1])
    logit = torch.relu(logit) + 0.1
    logit = logit / logit.sum(dim=1, keepdim=True)
    return torch.einsum("ikmn,k->imn", [logit, bins]).unsqueeze(dim=1)


def _rcu(sd: Mapping[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    y = F.conv2d(torch.relu(x), sd[f"{prefix}.conv1.conv.weight"], padding=1)
    y = F.conv2d(torch.relu(y), sd[f"{prefix}.conv2.conv.weight"], padding=1)
    return y + x


def _fusion(sd: Mapping[str, Tensor], prefix: str, x: Tensor, skip: Tensor | None) -> Tensor:
    if skip is not None:
        if x.shape != skip.shape:
            skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
        x = x + _rcu(sd, f"{prefix}.res_conv_unit1", skip)
    x = _rcu(sd, f"{prefix}.res_conv_unit2", x)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.conv2d(x, sd[f"{prefix}.project.conv.weight"], sd[f"{prefix}.project.conv.bias"])


def official_dpt(sd: Mapping[str, Tensor], blocks: Blocks, min_depth: float) -> Tensor:
    """DPTHead(readout_type="project") followed by its depth_pred (not classify, no scale-up)."""
    feats = []
    for i, (x, cls_token) in enumerate(blocks):
        shape = x.shape
        t = x.flatten(2).permute((0, 2, 1))
        readout = cls_token.unsqueeze(1).expand_as(t)
        p = f"reassemble_blocks.readout_projects.{i}.0"
        t = F.gelu(F.linear(torch.cat((t, readout), -1), sd[f"{p}.weight"], sd[f"{p}.bias"]))
        x = t.permute(0, 2, 1).reshape(shape)
        p = f"reassemble_blocks.projects.{i}.conv"
        x = F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"])
        p = f"reassemble_blocks.resize_layers.{i}"
        if i == 0:
            x = F.conv_transpose2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=4)
        elif i == 1:
            x = F.conv_transpose2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=2)
        elif i == 3:
            x = F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], stride=2, padding=1)
        feats.append(F.conv2d(x, sd[f"convs.{i}.conv.weight"], padding=1))
    out = _fusion(sd, "fusion_blocks.0", feats[-1], None)
    for i in range(1, 4):
        out = _fusion(sd, f"fusion_blocks.{i}", out, feats[-(i + 1)])
    out = torch.relu(F.conv2d(out, sd["project.conv.weight"], sd["project.conv.bias"], padding=1))
    out = F.conv2d(out, sd["conv_depth.head.0.weight"], sd["conv_depth.head.0.bias"], padding=1)
    out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    out = F.conv2d(out, sd["conv_depth.head.2.weight"], sd["conv_depth.head.2.bias"], padding=1)
    out = F.conv2d(torch.relu(out), sd["conv_depth.head.4.weight"], sd["conv_depth.head.4.bias"])
    return torch.relu(out) + min_depth


# ---------------------------------------------------------------------------- inference

#: An official-style decoder: unpadded image (B, 3, H, W) -> head output on the padded grid.
Decoder = Callable[[Tensor], Tensor]


def center_padding(x: Tensor, multiple: int = 14) -> Tensor:
    """The hub's CenterPadding: pad the last two dims to a multiple, left/top get pad // 2."""
    pads = []
    for size in x.shape[:1:-1]:
        new_size = math.ceil(size / multiple) * multiple
        pad = new_size - size
        pads += [pad // 2, pad - pad // 2]
    return F.pad(x, pads)


def official_encode_decode(decode: Decoder, img: Tensor, lo: float, hi: float) -> Tensor:
    """DepthEncoderDecoder.encode_decode(img, None, rescale=True): clamp, resize to the input."""
    out = decode(center_padding(img)).clamp(min=lo, max=hi)
    return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=False)


def official_slide(
    decode: Decoder,
    img: Tensor,
    lo: float,
    hi: float,
    stride: tuple[int, int],
    crop_size: tuple[int, int],
) -> Tensor:
    """DepthEncoderDecoder.slide_inference, one crop at a time."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop_size
    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, 1, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            depth_pred = official_encode_decode(decode, crop_img, lo, hi)
            preds += F.pad(depth_pred, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def official_flip_average(infer: Callable[[Tensor], Tensor], img: Tensor) -> Tensor:
    """aug_test over [img, flipped img]: the flipped result is flipped back, then the mean."""
    depth = infer(img)
    depth = depth + infer(img.flip(dims=(3,))).flip(dims=(3,))
    return depth / 2
