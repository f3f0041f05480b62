"""``pretrained=True``, the official hub's habit, says how to get the weights without a download."""

from __future__ import annotations

import sys

import pytest

from dinov2_heads import create_backbone


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("dinov2_vits14", "dinov2_vits14_pretrain.pth"),
        ("dinov2_vitg14_reg", "dinov2_vitg14_reg4_pretrain.pth"),
    ],
)
def test_pretrained_true_names_the_file_and_load_backbone(name: str, file: str) -> None:
    with pytest.raises(ValueError, match="downloads nothing") as error:
        create_backbone(name, pretrained=True, device="meta")
    message = str(error.value)
    assert file in message
    folder = name.removesuffix("_reg")
    assert f"https://dl.fbaipublicfiles.com/dinov2/{folder}/{file}" in message
    assert f'load_backbone("{file}")' in message
    assert f'create_backbone("{name}", checkpoint="{file}")' in message


def test_the_hub_builders_answer_the_same() -> None:
    # The hub-named builders live beside create_backbone.
    builders = sys.modules[create_backbone.__module__]
    with pytest.raises(ValueError, match=r"dinov2_vits14_reg4_pretrain\.pth"):
        builders.dinov2_vits14_reg(pretrained=True)


def test_pretrained_false_is_a_random_backbone() -> None:
    model = create_backbone("dinov2_vits14", pretrained=False, depth=1, device="meta")
    assert model.config.depth == 1


def test_an_unknown_name_is_still_the_unknown_name_error() -> None:
    with pytest.raises((KeyError, ValueError), match="dinov2_vitx14"):
        create_backbone("dinov2_vitx14", pretrained=True)
