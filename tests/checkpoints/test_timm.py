"""timm DINOv2 weights: layout round trips and outputs, including the folded class position.

timm itself cannot be imported here (it needs torchvision), so the timm layout is written by
``official_to_timm`` in conftest.py, following timm's checkpoint filter for DINOv2, and timm's
token preparation is reproduced below from its documented behaviour.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from dinov2_heads import DinoVisionTransformer
from dinov2_heads.checkpoints import (
    CheckpointError,
    convert_timm,
    describe_checkpoint,
    detect_format,
    load_backbone,
)

from .conftest import images, official_to_timm, tiny_backbone, tokens

SIZE = 70  # a 5x5 position table keeps these tests fast; the code path is the one of 518 px


def timm_style_tokens(source: DinoVisionTransformer, timm: dict[str, Tensor], x: Tensor) -> Tensor:
    """timm's forward on timm-layout weights at the table size, reusing ``source``'s blocks.

    Plain models add ``pos_embed`` to [class token, patches]; register models
    (``no_embed_class``) add it to the patches only, then put the class token (which already
    holds its position) and ``reg_token`` in front.
    """
    patches = F.conv2d(
        x, timm["patch_embed.proj.weight"], timm["patch_embed.proj.bias"], stride=source.patch_size
    )
    patches = rearrange(patches, "b d h w -> b (h w) d")
    cls = timm["cls_token"].expand(x.shape[0], -1, -1)
    if "reg_token" in timm:
        registers = timm["reg_token"].expand(x.shape[0], -1, -1)
        sequence = torch.cat((cls, registers, patches + timm["pos_embed"]), dim=1)
    else:
        sequence = torch.cat((cls, patches), dim=1) + timm["pos_embed"]
    with torch.no_grad():
        for block in source.blocks:
            sequence = block(sequence)
        return source.norm(sequence)


@pytest.mark.parametrize(
    ("registers", "swiglu"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_timm_layout_gives_the_same_outputs(registers: bool, swiglu: bool) -> None:
    source = tiny_backbone(registers=registers, swiglu=swiglu, img_size=SIZE)
    timm = official_to_timm(source.state_dict())
    assert detect_format(timm) == "timm"
    x = images((SIZE, SIZE))
    expected = tokens(source, x)
    # The reproduction of timm's forward agrees with the official one on these weights ...
    assert (timm_style_tokens(source, timm, x) - expected).abs().max().item() < 1e-5
    # ... and the converted weights give the official outputs again.
    loaded = load_backbone(timm)
    assert (tokens(loaded, x) - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("size", [(SIZE, SIZE), (42, 84)])
def test_folded_class_position_keeps_outputs_at_every_size(size: tuple[int, int]) -> None:
    source = tiny_backbone(registers=True, img_size=SIZE)
    loaded = load_backbone(official_to_timm(source.state_dict()))
    # The class position now lives in cls_token; the stored one is zero.
    assert torch.count_nonzero(loaded.pos_embed[:, 0]) == 0
    x = images(size)
    assert (tokens(loaded, x) - tokens(source, x)).abs().max().item() < 1e-5


def test_conversion_round_trip() -> None:
    source = tiny_backbone(registers=True, swiglu=True, img_size=SIZE)
    state = source.state_dict()
    converted = convert_timm(official_to_timm(state))
    assert converted.keys() == state.keys()
    folded = state["cls_token"] + state["pos_embed"][:, :1]
    assert torch.allclose(converted["cls_token"], folded)
    assert torch.equal(converted["pos_embed"][:, 1:], state["pos_embed"][:, 1:])
    assert torch.equal(converted["mask_token"], torch.zeros_like(state["mask_token"]))
    for key in state:
        if key.startswith("blocks."):
            assert torch.equal(converted[key], state[key]), key


def test_plain_timm_keeps_the_class_position() -> None:
    state = tiny_backbone(img_size=SIZE).state_dict()
    converted = convert_timm(official_to_timm(state))
    assert torch.equal(converted["pos_embed"], state["pos_embed"])
    assert torch.equal(converted["cls_token"], state["cls_token"])


def test_classifier_head_is_set_aside() -> None:
    timm = official_to_timm(tiny_backbone(img_size=SIZE).state_dict())
    timm["head.weight"] = torch.zeros(10, 128)
    timm["head.bias"] = torch.zeros(10)
    summary = describe_checkpoint(timm)
    assert summary.format == "timm"
    assert summary.set_aside == ("head.weight", "head.bias")
    assert load_backbone(timm).embed_dim == 128


def test_register_tokens_without_position_table_is_an_error() -> None:
    with pytest.raises(CheckpointError, match=r"needs \['pos_embed'\]"):
        convert_timm({"reg_token": torch.zeros(1, 4, 8), "cls_token": torch.zeros(1, 1, 8)})
