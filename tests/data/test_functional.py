from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    check_valid_size,
    denormalize,
    grid_size,
    nearest_valid_size,
    normalize,
    pil_to_tensor,
    resize,
    resize_shorter_side,
    tensor_to_pil,
    to_float,
)
from dinov2_heads.data.functional import shorter_side_size

from .conftest import noise_image


def pil_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def test_pil_to_tensor_is_uint8_chw_rgb() -> None:
    image = noise_image(5, 7)
    x = pil_to_tensor(image)
    assert x.dtype == torch.uint8
    assert x.shape == (3, 5, 7)
    assert torch.equal(x, pil_pixels(image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_pil_to_tensor_converts_other_modes(mode: str) -> None:
    image = noise_image(4, 6).convert(mode)
    x = pil_to_tensor(image)
    assert x.shape == (3, 4, 6)
    assert torch.equal(x, pil_pixels(image.convert("RGB")))


def test_pil_to_tensor_scales_16_bit_greyscale() -> None:
    values = np.array([[0, 255, 256, 4660], [32768, 65280, 65534, 65535]], dtype=np.uint16)
    expected = torch.from_numpy((values >> 8).astype(np.uint8)).expand(3, 2, 4)
    assert torch.equal(pil_to_tensor(Image.fromarray(values)), expected)
    # Pillow before 12 opens 16-bit greyscale PNG files in mode "I".
    from_png = Image.fromarray(values).convert("I")
    from_png.format = "PNG"
    assert torch.equal(pil_to_tensor(from_png), expected)
    # An "I" image of unknown origin keeps Pillow's own conversion when its values fit a byte,
    # and is refused when they do not (Pillow would clip them).
    small = Image.fromarray(np.array([[3, 200]], dtype=np.int32))
    assert pil_to_tensor(small)[:, 0].tolist() == [[3, 200]] * 3
    with pytest.raises(ValueError, match="32-bit integer pixels"):
        pil_to_tensor(Image.fromarray(np.array([[3, 300]], dtype=np.int32)))


def test_tensor_to_pil_round_trip() -> None:
    x = pil_to_tensor(noise_image(6, 9))
    assert torch.equal(pil_to_tensor(tensor_to_pil(x)), x)
    as_float = x.float() / 255
    assert torch.equal(pil_to_tensor(tensor_to_pil(as_float)), x)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        tensor_to_pil(x[None])


@pytest.mark.parametrize("size", [(100, 150), (33, 41), (120, 280), (256, 341)])
def test_resize_uint8_shrinking_matches_pillow_bicubic(size: tuple[int, int]) -> None:
    # Pillow's bicubic resize is what torchvision's Resize does to PIL images in the official
    # DINOv2 transforms; shrinking (the usual case) must agree to within one grey level.
    image = noise_image(260, 360)
    ours = resize(pil_to_tensor(image), size)
    reference = pil_pixels(image.resize((size[1], size[0]), Image.Resampling.BICUBIC))
    assert ours.dtype == torch.uint8
    assert ours.shape == (3, *size)
    assert (ours.int() - reference.int()).abs().max() <= 1


@pytest.mark.parametrize("size", [(256, 384), (120, 500), (400, 150)])
def test_resize_uint8_growing_is_close_to_pillow(size: tuple[int, int]) -> None:
    image = noise_image(200, 300)
    ours = resize(pil_to_tensor(image), size)
    reference = pil_pixels(image.resize((size[1], size[0]), Image.Resampling.BICUBIC))
    difference = (ours.int() - reference.int()).abs().float()
    assert difference.mean() < 0.5
    assert (difference > 1).float().mean() < 0.02


def test_resize_float_close_to_uint8_and_batched() -> None:
    images = torch.stack([pil_to_tensor(noise_image(40, 60, seed)) for seed in range(2)])
    small = resize(images, (28, 42))
    as_float = resize(images.float() / 255, (28, 42))
    assert as_float.dtype == torch.float32
    assert (as_float.clamp(0, 1) * 255 - small.float()).abs().mean() < 1.0
    for i in range(2):
        assert torch.equal(resize(images[i], (28, 42)), small[i])


def test_resize_same_size_is_identity() -> None:
    x = torch.rand(3, 14, 28)
    assert resize(x, (14, 28)) is x


def test_resize_rejects_non_images() -> None:
    with pytest.raises(ValueError, match="RGB image"):
        resize(torch.rand(2, 8, 8), 4)
    with pytest.raises(ValueError, match="positive"):
        resize(torch.rand(3, 8, 8), (0, 4))


def test_shorter_side_size_truncates_like_torchvision() -> None:
    assert shorter_side_size(375, 500, 256) == (256, 341)
    assert shorter_side_size(500, 375, 256) == (341, 256)
    assert shorter_side_size(300, 300, 256) == (256, 256)
    out = resize_shorter_side(torch.zeros(3, 375, 500, dtype=torch.uint8), 256)
    assert out.shape == (3, 256, 341)


def test_center_crop_offsets_round_like_torchvision() -> None:
    x = torch.arange(7 * 9).reshape(1, 7, 9).expand(3, 7, 9)
    crop = center_crop(x, (4, 4))
    # top = round(3 / 2) = 2, left = round(5 / 2) = 2 (round half to even).
    assert torch.equal(crop, x[:, 2:6, 2:6])
    crop = center_crop(x, (2, 6))
    assert torch.equal(crop, x[:, 2:4, 2:8])  # top = round(2.5) = 2, left = round(1.5) = 2


def test_center_crop_pads_small_images_with_zeros() -> None:
    x = torch.ones(3, 2, 3)
    crop = center_crop(x, (4, 6))
    assert crop.shape == (3, 4, 6)
    assert crop.sum() == x.sum()
    assert torch.equal(crop[:, 1:3, 1:4], x)


def test_normalize_and_denormalize() -> None:
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(white)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)


def test_to_float() -> None:
    assert torch.equal(
        to_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0])
    )
    with pytest.raises(TypeError, match="uint8 or floating point"):
        to_float(torch.zeros(3, dtype=torch.int32))


def test_nearest_valid_size_rounds_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dinov2_heads.data.functional"):
        assert nearest_valid_size((125, 250)) == (126, 252)
    assert "125x250" in caplog.text
    assert "126x252" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dinov2_heads.data.functional"):
        assert nearest_valid_size((126, 252)) == (126, 252)
    assert caplog.text == ""
    assert nearest_valid_size(3) == (14, 14)
    assert nearest_valid_size(230) == (224, 224)
    assert nearest_valid_size(35) == (28, 28)  # a tie goes to the even multiple
    with pytest.raises(ValueError, match="positive"):
        nearest_valid_size((0, 14))


def test_check_valid_size_and_grid() -> None:
    check_valid_size((126, 252))
    with pytest.raises(ValueError, match="125x252 is not a multiple of patch size 14; use 126x252"):
        check_valid_size((125, 252))
    assert grid_size((126, 252)) == (9, 18)


@pytest.mark.parametrize("size", [(126, 252), (14, 28), (154, 210)])
def test_uint8_resize_without_the_cpu_kernel_agrees(size: tuple[int, int]) -> None:
    # GPUs have no uint8 bicubic kernel; their path (two float passes, rounded and clipped in
    # between) must give the CPU kernel's pixels, not a one-pass float resize's.
    from dinov2_heads.data.functional import _resize_uint8_in_float

    pixels = torch.stack([pil_to_tensor(noise_image(200, 300, seed)) for seed in range(2)])
    emulated = _resize_uint8_in_float(pixels, *size)
    assert emulated.dtype == torch.uint8
    assert (emulated.int() - resize(pixels, size).int()).abs().max() <= 1
