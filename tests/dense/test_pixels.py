"""``Segmenter`` and ``Depther`` on ``uint8`` pixels: normalised on the device, then padded.

Pixels are normalised in float32 with the ``FrozenBackbone``'s mean and std before any padding,
flip, rescale or crop, so on the CPU every output equals, bit for bit, the output for the same
images normalised first with ``dinov2_heads.data.normalize``: whole images and sliding windows,
flips and scales, sizes that need padding, every depth head (DPT included), bfloat16 weights,
and the official backbone with the released head layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import load_partial
from dinov2_heads.data import normalize
from dinov2_heads.dense import Depther, Segmenter
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead, LinearSegmentationHead
from tests.dense.conftest import tiny_backbone
from tests.dense.test_segmenter import trained_head

#: Test-time settings: whole images, flips, scales, sliding windows with all of them.
SETTINGS: list[dict[str, Any]] = [
    {},
    {"flip": True},
    {"mode": "slide", "crop_size": (28, 28), "stride": (14, 20)},
    {"mode": "slide", "crop_size": (30, 40), "stride": (20, 25), "flip": True},
]
#: Sizes that need padding on both sides, on one, and none.
SIZES = [(37, 53), (28, 43), (28, 42)]

DEPTH_HEADS: dict[str, Callable[[], nn.Module]] = {
    "linear1": lambda: LinearDepthHead(32, max_depth=10.0),
    "linear4": lambda: LinearDepthHead(32, layers=4, max_depth=10.0),
    "dpt": lambda: DPTDepthHead(32, channels=8),
}


def pixels(height: int, width: int, batch: int = 2, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)


def randomized(head: nn.Module, seed: int = 4) -> nn.Module:
    """The head with visible random weights (a fresh depth head's output is nearly flat)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(std=0.3)
    return head.eval()


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_segmenter_on_pixels_equals_it_on_normalised_images(
    settings: dict[str, Any], height: int, width: int
) -> None:
    segmenter = Segmenter(tiny_backbone(depth=4), trained_head(layers=2), **settings).eval()
    images = pixels(height, width)
    with torch.no_grad():
        got = segmenter(images)
        expected = segmenter(normalize(images))
        logits = segmenter.logits(images)
        expected_logits = segmenter.logits(normalize(images))
    assert got.dtype == torch.float32
    assert got.shape == (2, 5, height, width)
    assert torch.equal(got, expected)
    assert torch.equal(logits, expected_logits)
    assert torch.equal(segmenter.predict(images), expected.argmax(dim=1))


def test_segmenter_scales_on_pixels() -> None:
    segmenter = Segmenter(
        tiny_backbone(depth=4),
        trained_head(layers=2),
        mode="slide",
        crop_size=(28, 28),
        stride=(20, 20),
        flip=True,
        scales=(0.75, 1.3),
    ).eval()
    images = pixels(33, 47)
    with torch.no_grad():
        assert torch.equal(segmenter(images), segmenter(normalize(images)))


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("kind", sorted(DEPTH_HEADS))
def test_depther_on_pixels_equals_it_on_normalised_images(
    settings: dict[str, Any], kind: str
) -> None:
    depther = Depther(tiny_backbone(depth=4), randomized(DEPTH_HEADS[kind]()), **settings).eval()
    images = pixels(37, 53, seed=1)
    with torch.no_grad():
        got = depther(images)
        expected = depther(normalize(images))
        one_pass = depther.depth(images)
        expected_pass = depther.depth(normalize(images))
    assert got.shape == (2, 1, 37, 53)
    assert float(got.std()) > 0  # a map that shows the images, not a constant
    assert torch.equal(got, expected)
    assert torch.equal(one_pass, expected_pass)


def test_bfloat16_weights_get_the_float32_normalised_images_cast_once() -> None:
    backbone = tiny_backbone(depth=4)
    head = randomized(DEPTH_HEADS["dpt"]())
    frozen = FrozenBackbone.for_heads(backbone, head, dtype=torch.bfloat16)
    depther = Depther(frozen, head, mode="slide", crop_size=(28, 28), stride=(14, 14)).eval()
    images = pixels(30, 44, seed=2)
    with torch.no_grad():
        assert torch.equal(depther(images), depther(normalize(images)))


def test_the_frozen_backbones_mean_and_std_normalise_the_pixels() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    backbone = tiny_backbone(depth=4)
    head = trained_head(layers=2)
    frozen = FrozenBackbone.for_heads(backbone, head, mean=mean, std=std)
    segmenter = Segmenter(frozen, head, flip=True).eval()
    images = pixels(37, 53, seed=3)
    with torch.no_grad():
        got = segmenter(images)
        assert torch.equal(got, segmenter(normalize(images, mean, std)))
        # ImageNet's normalisation gives other probabilities: the backbone's own were used.
        assert not torch.allclose(got, segmenter(normalize(images)), atol=1e-4)


def test_pixels_go_to_the_backbones_device_before_anything_is_computed() -> None:
    # A backbone on the meta device holds no values: a computation on the CPU pixels would
    # give a CPU tensor; what comes out is on the meta device, the right shape.
    backbone = create_backbone(
        "dinov2_vits14", depth=4, embed_dim=32, num_heads=2, img_size=56, device="meta"
    )
    head = LinearSegmentationHead(32, 5, layers=2).to("meta").eval()
    segmenter = Segmenter(backbone, head, mode="slide", crop_size=(28, 28), stride=(14, 14))
    with torch.no_grad():
        got = segmenter(pixels(37, 53))
    assert got.device.type == "meta"
    assert got.shape == (2, 5, 37, 53)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_other_integer_images_are_refused(dtype: torch.dtype) -> None:
    backbone = tiny_backbone(depth=4)
    images = torch.zeros(1, 3, 28, 28, dtype=dtype)
    segmenter = Segmenter(backbone, trained_head(layers=2))
    depther = Depther(backbone, LinearDepthHead(32))
    fix = r"pass pixels as images\.to\(torch\.uint8\) when they are 0\.\.255, or normalise"
    for predictor in (segmenter, depther):
        name = type(predictor).__name__
        with pytest.raises(TypeError, match=rf"{name} takes .* got {dtype}; {fix}"):
            predictor(images)
    with pytest.raises(TypeError, match=rf"Segmenter takes .* got {dtype}"):
        segmenter.logits(images)
    with pytest.raises(TypeError, match=rf"Depther takes .* got {dtype}"):
        depther.depth(images)
    with pytest.raises(ValueError, match=r"images\.unsqueeze\(0\)"):
        depther(torch.zeros(3, 28, 28, dtype=torch.uint8))


def test_the_official_backbone_and_released_heads_on_pixels(dense_fixtures_dir: Any) -> None:
    from tests.heads.official_depth import fixture_backbone

    backbone = fixture_backbone()
    images = pixels(50, 75, batch=1, seed=5)
    for name, head in (
        ("vits14_seg_ms_head.pth", LinearSegmentationHead(384, 21, layers=4)),
        ("vits14_depth_dpt_head.pth", DPTDepthHead(384)),
    ):
        state = torch.load(dense_fixtures_dir / name, weights_only=True)["state_dict"]
        state = {k: v.float() for k, v in state.items()}
        load_partial(head, state, rename={"decode_head.": ""}, strict=True)
        head.eval()
        predictor: nn.Module = (
            Segmenter(backbone, head, mode="slide", crop_size=42, stride=28, flip=True)
            if isinstance(head, LinearSegmentationHead)
            else Depther(backbone, head, flip=True)
        )
        with torch.no_grad():
            assert torch.equal(predictor(images), predictor(normalize(images))), name
