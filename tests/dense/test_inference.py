"""Whole, sliding-window, flip and multi-scale inference against the official definitions.

The references are written from mmsegmentation 0.x ``EncoderDecoder`` (``slide_inference``,
``inference``, ``aug_test``): one crop at a time, outputs placed with ``F.pad`` and divided by
the count of crops over each pixel; softmax per view; flipped views mirrored back; views
averaged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.dense import InferenceSettings, dense_inference, slide_inference, sliding_windows
from tests.dense.official import official_aug_test, official_slide


class CountingModel:
    """A per-pixel model whose output depends on the crop's contents and on the position in it.

    Per sample: the image minus its mean, times a left-to-right ramp (so mirroring matters),
    and a channel holding the sample's standard deviation.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += x.shape[0]
        ramp = torch.linspace(0.5, 1.5, x.shape[-1], dtype=x.dtype)
        centred = (x - x.mean(dim=(-2, -1), keepdim=True)) * ramp
        spread = x.std(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
        return torch.cat([centred, spread], dim=1)


def softmax(x: Tensor) -> Tensor:
    return x.softmax(dim=1)


def image(batch: int = 2, height: int = 37, width: int = 53, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [
        (37, 53, (16, 16), (11, 11)),
        (16, 16, (16, 16), (11, 11)),
        (10, 70, (16, 20), (8, 20)),
        (512, 683, (512, 512), (341, 341)),
        (5, 5, (16, 16), (8, 8)),
    ],
)
def test_windows_are_mmsegs_grid(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> None:
    seen: list[tuple[int, int, int, int]] = []

    def record(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape[-2:]))  # type: ignore[arg-type]
        return x[:, :1]

    official_slide(record, torch.zeros(1, 1, height, width), crop, stride)
    windows = sliding_windows(height, width, crop, stride)
    assert len(windows) == len(seen)
    for (top, bottom, left, right), shape in zip(windows, seen, strict=True):
        assert (bottom - top, right - left) == shape
        assert 0 <= top < bottom <= height
        assert 0 <= left < right <= width
    assert windows[-1][1] == height
    assert windows[-1][3] == width


def test_ade20k_grid_has_six_crops() -> None:
    # A 512 x 683 ADE20K test image with the official 512 crops every 341 pixels.
    windows = sliding_windows(512, 683, (512, 512), (341, 341))
    assert windows == ((0, 512, 0, 512), (0, 512, 171, 683))


# ---------------------------------------------------------------------- slide


@pytest.mark.parametrize("per_call", [None, 1, 2, 5])
def test_batched_slide_equals_the_one_crop_loop(per_call: int | None) -> None:
    x = image()
    reference_model, model = CountingModel(), CountingModel()
    expected = official_slide(reference_model, x, (16, 20), (11, 13))
    got = slide_inference(model, x, (16, 20), (11, 13), crops_per_call=per_call)
    assert got.shape == (2, 4, 37, 53)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    windows = len(sliding_windows(37, 53, (16, 20), (11, 13)))
    assert reference_model.calls == windows == 12
    assert model.calls == (1 if per_call is None else -(-windows // per_call))
    assert model.images == reference_model.images


def test_crop_larger_than_the_image_is_whole_inference() -> None:
    x = image(height=12, width=15)
    torch.testing.assert_close(
        slide_inference(CountingModel(), x, (16, 16), (8, 8)), CountingModel()(x)
    )


# ---------------------------------------------------------------------- views


@pytest.mark.parametrize("mode", ["whole", "slide"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scales", [(1.0,), (0.75, 1.0, 1.5)])
def test_views_equal_the_official_aug_test(
    mode: str, flip: bool, scales: tuple[float, ...]
) -> None:
    x = image()
    slide = ((16, 20), (11, 13)) if mode == "slide" else None
    settings = InferenceSettings(
        mode=mode,  # type: ignore[arg-type]
        crop_size=slide[0] if slide else None,
        stride=slide[1] if slide else None,
        flip=flip,
        scales=scales,
    )
    model = CountingModel()
    got = dense_inference(model, x, settings, activation=softmax)
    expected = official_aug_test(CountingModel(), x, list(scales), flip, slide)
    assert got.shape == (2, 4, 37, 53)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 37, 53))
    # The mirror and all windows of a scale go through the model together.
    assert model.calls == len(scales)
    assert settings.num_views == len(scales) * (2 if flip else 1)


def test_flip_matters_and_no_activation_averages_raw_outputs() -> None:
    x = image()
    model = CountingModel()
    plain = dense_inference(model, x, InferenceSettings())
    flipped = dense_inference(model, x, InferenceSettings(flip=True))
    assert torch.equal(plain, model(x))
    mirror = model(x.flip(-1)).flip(-1)
    torch.testing.assert_close(flipped, (plain + mirror) / 2)
    assert not torch.allclose(flipped, plain)


def test_gradients_flow_through_inference() -> None:
    weight = torch.ones(1, 3, 1, 1, requires_grad=True)
    settings = InferenceSettings(mode="slide", crop_size=8, stride=5, flip=True, scales=(1.0, 0.5))
    out = dense_inference(lambda x: F.conv2d(x, weight), image(), settings)
    out.sum().backward()
    assert weight.grad is not None
    assert weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- settings


def test_settings_normalise_and_check() -> None:
    settings = InferenceSettings(mode="slide", crop_size=512, stride=[341, 300], scales=[1, 2])  # type: ignore[arg-type]
    assert settings.crop_size == (512, 512)
    assert settings.stride == (341, 300)
    assert settings.scales == (1.0, 2.0)
    with pytest.raises(ValueError, match="mode must be 'whole' or 'slide'"):
        InferenceSettings(mode="tile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        InferenceSettings(mode="slide", crop_size=512)
    with pytest.raises(ValueError, match="used only by mode='slide'"):
        InferenceSettings(crop_size=512)
    with pytest.raises(ValueError, match="larger than crop_size"):
        InferenceSettings(mode="slide", crop_size=16, stride=17)
    with pytest.raises(ValueError, match="crop_size must be a positive int"):
        InferenceSettings(mode="slide", crop_size=(16, 0), stride=8)
    for scales in ((), 1.0, (1.0, -0.5), (float("nan"),), (True,)):
        with pytest.raises(ValueError, match="scale"):
            InferenceSettings(scales=scales)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="flip must be True or False"):
        InferenceSettings(flip=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crops_per_call"):
        InferenceSettings(crops_per_call=0)
