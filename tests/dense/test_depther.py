"""``Depther`` against the official depth outputs and the official test-time definitions.

The fixtures hold official whole-image outputs at 224x224; padding, sliding windows and flips
are checked against ``tests/heads/official_depth.py``, written from the hub's
``DepthEncoderDecoder`` and ``CenterPadding``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.checkpoints import load_partial
from dinov2_heads.dense import Depther
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead
from tests.heads.official_depth import (
    FIXTURE_BLOCKS,
    dense_fixtures,
    fixture_backbone,
    official_encode_decode,
    official_flip_average,
    official_slide,
)
from tests.helpers import randomize

HEADS: dict[str, Callable[[], nn.Module]] = {
    "linear1": lambda: LinearDepthHead(384),
    "linear4": lambda: LinearDepthHead(384, layers=4),
    "dpt": lambda: DPTDepthHead(384),
}


@pytest.fixture(scope="module")
def backbone() -> DinoVisionTransformer:
    return fixture_backbone()


@pytest.fixture(scope="module")
def refs() -> dict[str, dict[str, Tensor]]:
    return torch.load(dense_fixtures() / "depth_refs.pt", weights_only=True)


def released(name: str) -> nn.Module:
    head = HEADS[name]()
    report = load_partial(
        head, dense_fixtures() / f"vits14_depth_{name}_head.pth", rename={"decode_head.": ""}
    )
    assert report.complete
    return head.eval()


def official_decoder(backbone: DinoVisionTransformer, name: str, head: nn.Module):  # type: ignore[no-untyped-def]
    """The hub's backbone.forward (get_intermediate_layers, norm off) and decode head."""

    def decode(padded: Tensor) -> Tensor:
        blocks = backbone.get_intermediate_layers(
            padded, n=FIXTURE_BLOCKS[name], reshape=True, return_class_token=True, norm=False
        )
        return head.decode(blocks)

    return decode


def relative_error(got: Tensor, expected: Tensor) -> float:
    return float(((got - expected).abs() / expected.abs()).max())


@pytest.mark.parametrize("name", ["linear1", "linear4", "dpt"])
def test_whole_inference_equals_the_official_outputs(
    backbone: DinoVisionTransformer, refs: dict[str, dict[str, Tensor]], name: str
) -> None:
    head = released(name)
    depther = Depther(backbone, head).eval()
    assert depther.frozen.blocks == tuple((i, False) for i in FIXTURE_BLOCKS[name])
    with torch.no_grad():
        got = depther(refs["inputs"]["x224"])
    expected = refs["refs"][f"depth_{name}/x224/whole"]
    assert got.shape == expected.shape == (2, 1, 224, 224)
    assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize(("name", "size"), [("linear4", (100, 130)), ("dpt", (113, 99))])
def test_padding_equals_the_official_center_padding(
    backbone: DinoVisionTransformer, name: str, size: tuple[int, int]
) -> None:
    head = released(name)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official_encode_decode(
            official_decoder(backbone, name, head), images, head.min_depth, head.max_depth
        )
        got = Depther(backbone, head).eval()(images)
    assert got.shape == (1, 1, *size)
    assert relative_error(got, expected) < 1e-5


def test_slide_equals_the_official_sliding_window(
    backbone: DinoVisionTransformer, refs: dict[str, dict[str, Tensor]]
) -> None:
    # The fixtures record the official sliding-window setting; the images are the fixture
    # input cut to a size the windows do not tile exactly (the last crops shift back). The
    # linear4 head keeps the test fast; the windowing does not depend on the head (the DPT
    # head's own numbers are checked on whole images).
    name = "linear4"
    crop, stride = refs["slide"]["crop_size"], refs["slide"]["stride"]
    head = released(name)
    images = refs["inputs"]["x224"][:1, :, :200, :221]
    with torch.no_grad():
        expected = official_slide(
            official_decoder(backbone, name, head),
            images,
            head.min_depth,
            head.max_depth,
            stride=tuple(stride),
            crop_size=tuple(crop),
        )
        depther = Depther(backbone, head, mode="slide", crop_size=crop, stride=stride)
        got = depther.eval()(images)
    assert got.shape == (1, 1, 200, 221)
    assert relative_error(got, expected) < 1e-5


def test_flip_equals_the_official_flip_augmentation(backbone: DinoVisionTransformer) -> None:
    head = released("linear4")
    images = torch.randn(2, 3, 70, 98, generator=torch.Generator().manual_seed(2))
    decode = official_decoder(backbone, "linear4", head)
    with torch.no_grad():
        expected = official_flip_average(
            lambda x: official_encode_decode(decode, x, head.min_depth, head.max_depth), images
        )
        got = Depther(backbone, head, flip=True).eval()(images)
        plain = Depther(backbone, head).eval()(images)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(plain, expected) > 1e-4  # the mirror changes the result


def test_slide_with_flip_equals_the_official_composition(backbone: DinoVisionTransformer) -> None:
    head = released("linear1")
    images = torch.randn(1, 3, 84, 130, generator=torch.Generator().manual_seed(3))
    decode = official_decoder(backbone, "linear1", head)
    lo, hi = head.min_depth, head.max_depth
    with torch.no_grad():
        expected = official_flip_average(
            lambda x: official_slide(decode, x, lo, hi, stride=(28, 60), crop_size=(56, 70)),
            images,
        )
        depther = Depther(
            backbone, head, mode="slide", crop_size=(56, 70), stride=(28, 60), flip=True
        )
        got = depther.eval()(images)
    assert relative_error(got, expected) < 1e-5


def tiny_backbone(depth: int = 4) -> DinoVisionTransformer:
    torch.manual_seed(0)
    model = create_backbone("dinov2_vits14", depth=depth, embed_dim=32, num_heads=2, img_size=56)
    return randomize(model)


def test_output_is_clamped_to_the_heads_range_and_trains_the_head_only() -> None:
    backbone = tiny_backbone()
    head = DPTDepthHead(32, channels=8, min_depth=0.5, max_depth=0.6)
    depther = Depther(backbone, head)
    images = torch.randn(2, 3, 30, 45)
    with torch.no_grad():
        depth = depther(images)
    assert depth.shape == (2, 1, 30, 45)
    # Clamped on the head's grid, then resized bilinearly (float rounding aside).
    assert float(depth.min()) >= 0.5 - 1e-6
    assert float(depth.max()) <= 0.6 + 1e-6
    depther.train()
    assert not depther.frozen.training
    linear = Depther(backbone, LinearDepthHead(32, layers=4, max_depth=10.0))
    linear(images).mean().backward()
    assert linear.head.conv_depth.weight.grad is not None
    assert all(p.grad is None for p in backbone.parameters())


def test_frozen_backbone_is_used_or_refused() -> None:
    backbone = tiny_backbone()
    head = LinearDepthHead(32, layers=4)
    frozen = FrozenBackbone.for_heads(backbone, head)
    assert Depther(frozen, head).frozen is frozen
    with pytest.raises(ValueError, match=r"does not extract the blocks \[\(0, False\)"):
        Depther(FrozenBackbone(backbone), head)


def test_bad_inputs_are_refused() -> None:
    backbone = tiny_backbone()
    depther = Depther(backbone, LinearDepthHead(32))
    with pytest.raises(ValueError, match=r"add a batch dimension"):
        depther(torch.randn(3, 28, 28))
    with pytest.raises(TypeError, match=r"Depther takes .* got torch\.int64; pass pixels as"):
        depther(torch.zeros(1, 3, 28, 28, dtype=torch.int64))
    with pytest.raises(TypeError, match="min_depth and max_depth"):
        Depther(backbone, nn.Conv2d(3, 1, 1))
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        Depther(backbone, LinearDepthHead(32), mode="slide")
    with pytest.raises(ValueError, match="between 1 and 4 blocks"):
        Depther(backbone, LinearDepthHead(32, layers=5))
    assert "mode='slide', crop_size=(28, 28), stride=(14, 14)" in repr(
        Depther(backbone, LinearDepthHead(32), mode="slide", crop_size=28, stride=14)
    )
