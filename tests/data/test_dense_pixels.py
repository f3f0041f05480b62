"""The dense joint transforms with ``normalize=False``: ``uint8`` pixels and the same pairs.

Crops, flips and the evaluation transforms move pixels as they are, so the pixels normalised
afterwards equal the ``normalize=True`` output bit for bit, with the same random draws; a
rescale or a colour jitter is rounded to whole grey levels, and a crop pads with the mean
colour rounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from dinov2_heads.cache.loader_settings import reads_image_files
from dinov2_heads.data import (
    IGNORE_LABEL,
    DepthDataset,
    DepthTransform,
    SegmentationDataset,
    SegmentationTransform,
    normalize,
    pil_to_tensor,
)
from tests.data.conftest import noise_image


def image_and_mask(height: int = 40, width: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    mask = torch.randint(0, 5, (height, width), generator=generator)
    mask[:3, :4] = IGNORE_LABEL
    return image, mask


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"crop_size": (28, 28), "flip": 0.5},
        {"crop_size": (40, 14), "flip": 1.0},
    ],
)
def test_segmentation_pixels_normalised_are_the_float_output(settings: dict[str, object]) -> None:
    image, mask = image_and_mask()
    floats = SegmentationTransform(**settings, seed=7)  # type: ignore[arg-type]
    pixels = SegmentationTransform(**settings, seed=7, normalize=False)  # type: ignore[arg-type]
    for _ in range(5):
        (x, x_mask), (p, p_mask) = floats(image, mask), pixels(image, mask)
        assert p.dtype == torch.uint8
        assert p_mask.dtype == torch.int64
        assert torch.equal(normalize(p), x)
        assert torch.equal(p_mask, x_mask)
    evaluation, _ = SegmentationTransform(normalize=False)(image, mask)
    assert torch.equal(evaluation, image)


def test_a_pillow_image_gives_its_own_pixels() -> None:
    picture = noise_image(30, 40, seed=2)
    mask = torch.zeros(30, 40, dtype=torch.long)
    pixels, _ = SegmentationTransform(normalize=False)(picture, mask)
    assert torch.equal(pixels, pil_to_tensor(picture))


def test_a_rescale_is_the_float_rescale_rounded_to_grey_levels() -> None:
    image, mask = image_and_mask(seed=1)
    # mean 0 and std 1 leave the float image in [0, 1], to compare with the pixels.
    identity = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    floats = SegmentationTransform(scale_range=(0.6, 1.7), flip=0.5, seed=3, **identity)
    pixels = SegmentationTransform(scale_range=(0.6, 1.7), flip=0.5, seed=3, normalize=False)
    sizes = set()
    for _ in range(6):
        (x, x_mask), (p, p_mask) = floats(image, mask), pixels(image, mask)
        sizes.add(tuple(p.shape[-2:]))
        assert p.dtype == torch.uint8
        assert p.shape == x.shape
        assert torch.equal(p_mask, x_mask)
        assert float((p.float() - x * 255).abs().max()) <= 0.5 + 1e-3
    assert len(sizes) > 1  # shrunk and enlarged


def test_a_crop_pads_with_the_mean_colour_rounded() -> None:
    image, mask = image_and_mask(height=10, width=12, seed=2)
    pixels = SegmentationTransform(crop_size=(16, 20), seed=0, normalize=False)
    assert pixels.pad_pixel == (124, 116, 104)
    out, out_mask = pixels(image, mask)
    assert out.shape == (3, 16, 20)
    padded = out_mask == IGNORE_LABEL
    assert int(padded.sum()) == 16 * 20 - 10 * 12 + int((mask == IGNORE_LABEL).sum())
    outside = torch.ones(16, 20, dtype=torch.bool)
    outside[:10, :12] = False
    assert torch.equal(out[:, outside], torch.tensor([[124], [116], [104]]).expand(3, 200))
    assert torch.equal(out[:, :10, :12], image)
    # Normalised, the padding is within half a grey level of the float transform's 0.
    floats, _ = SegmentationTransform(crop_size=(16, 20), seed=0)(image, mask)
    assert float((normalize(out) - floats)[:, outside].abs().max()) <= 0.5 / 255 / 0.224
    grey = SegmentationTransform(
        crop_size=(16, 20), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), normalize=False
    )
    assert grey.pad_pixel == (128, 128, 128)


def test_segmentation_errors() -> None:
    image, mask = image_and_mask()
    with pytest.raises(
        ValueError, match=r"normalize=False\) hands on uint8 .* got a torch\.float32"
    ):
        SegmentationTransform(normalize=False)(image.float() / 255, mask)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        SegmentationTransform(normalize=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per RGB channel"):
        SegmentationTransform(mean=(0.5, 0.5))  # type: ignore[arg-type]


def depth_pair(height: int = 20, width: int = 30) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    depth = torch.rand(1, height, width, generator=generator) * 10
    return image, depth


def test_depth_pixels_normalised_are_the_float_output() -> None:
    image, depth = depth_pair()
    still = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    floats = DepthTransform(crop_size=(14, 28), flip=0.5, seed=2, **still)
    pixels = DepthTransform(crop_size=(14, 28), flip=0.5, seed=2, normalize=False, **still)
    for _ in range(6):
        (x, x_depth), (p, p_depth) = floats(image, depth), pixels(image, depth)
        assert p.dtype == torch.uint8
        assert p.is_contiguous()
        assert torch.equal(normalize(p), x)
        assert torch.equal(p_depth, x_depth)
    evaluation, evaluation_depth = DepthTransform.evaluation(normalize=False)(image, depth)
    assert torch.equal(evaluation, image)
    assert torch.equal(evaluation_depth, depth)


def test_jittered_colours_are_rounded_to_grey_levels() -> None:
    image, depth = depth_pair()
    identity = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    floats = DepthTransform(flip=0.5, hue=0.1, seed=4, **identity)  # type: ignore[arg-type]
    pixels = DepthTransform(flip=0.5, hue=0.1, seed=4, normalize=False)
    for _ in range(4):
        (x, x_depth), (p, p_depth) = floats(image, depth), pixels(image, depth)
        assert p.dtype == torch.uint8
        assert not torch.equal(p, image)  # the colours did change
        assert float((p.float() - x * 255).abs().max()) <= 0.5 + 1e-3
        assert torch.equal(p_depth, x_depth)


def test_depth_errors() -> None:
    image, depth = depth_pair()
    with pytest.raises(
        ValueError, match=r"normalize=False\) hands on uint8 .* got a torch\.float32"
    ):
        DepthTransform.evaluation(normalize=False)(image.float() / 255, depth)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        DepthTransform(normalize="no")  # type: ignore[arg-type]


def test_datasets_yield_pixels(tmp_path: Path) -> None:
    picture = noise_image(28, 42, seed=3)
    picture.save(tmp_path / "a.png")
    Image.fromarray(np.full((28, 42), 2, dtype=np.uint8)).save(tmp_path / "a_mask.png")
    np.save(tmp_path / "a_depth.npy", np.full((28, 42), 3.5, dtype=np.float32))
    masks = SegmentationDataset(
        [tmp_path / "a.png"], [tmp_path / "a_mask.png"], SegmentationTransform(normalize=False)
    )
    image, mask = masks[0]
    assert image.dtype == torch.uint8
    assert torch.equal(image, pil_to_tensor(picture))
    assert torch.equal(normalize(image), SegmentationDataset(masks.images, masks.masks)[0][0])
    assert torch.equal(mask, torch.full((28, 42), 2))
    depths = DepthDataset(
        [(tmp_path / "a.png", tmp_path / "a_depth.npy")],
        transform=DepthTransform.evaluation(normalize=False),
    )
    image, depth = depths[0]
    assert torch.equal(image, pil_to_tensor(picture))
    assert torch.equal(depth, torch.full((1, 28, 42), 3.5))
    # Both read files, so extract_features(num_workers="auto") gives them worker processes.
    assert reads_image_files(masks)
    assert reads_image_files(depths)
