from __future__ import annotations

import pytest
import torch
from torch import Tensor

from dinov2_heads.data import DepthTransform, denormalize, normalize, resize_pair


def pair(height: int = 20, width: int = 30) -> tuple[Tensor, Tensor]:
    """An image and a depth map that encode each pixel's column, so moves can be traced."""
    columns = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    image = torch.stack([columns / width, rows / height, torch.zeros(height, width)])
    image = (image * 255).round().to(torch.uint8)
    depth = (1.0 + columns + 100 * rows)[None]
    return image, depth


def test_crop_and_flip_move_image_and_depth_together() -> None:
    image, depth = pair()
    transform = DepthTransform(
        crop_size=(14, 28), flip=0.5, brightness=0, contrast=0, saturation=0, seed=0
    )
    flips = 0
    for _ in range(20):
        out_image, out_depth = transform(image, depth)
        assert out_image.shape == (3, 14, 28)
        assert out_depth.shape == (1, 14, 28)
        assert out_image.dtype == out_depth.dtype == torch.float32
        pixels = (denormalize(out_image) * 255).round()
        # Recover each output pixel's source row and column from the image, then check the depth.
        cols = torch.round(pixels[0] / 255 * 30)
        rows = torch.round(pixels[1] / 255 * 20)
        assert torch.equal(out_depth[0], 1.0 + cols + 100 * rows)
        flips += int(cols[0, 0] > cols[0, -1])
    assert 0 < flips < 20


def test_seeded_transforms_repeat_and_evaluation_only_normalises() -> None:
    image, depth = pair()
    first = DepthTransform(crop_size=14, seed=3)
    second = DepthTransform(crop_size=14, seed=3)
    for _ in range(3):
        a, b = first(image, depth), second(image, depth)
        assert torch.equal(a[0], b[0])
        assert torch.equal(a[1], b[1])
    plain_image, plain_depth = DepthTransform.evaluation()(image, depth)
    assert torch.allclose(plain_image, normalize(image))
    assert torch.equal(plain_depth, depth)


def test_colour_jitter_leaves_depth_alone() -> None:
    image, depth = pair()
    transform = DepthTransform(flip=0.0, brightness=0.5, contrast=0.5, saturation=0.5, seed=1)
    out_image, out_depth = transform(image, depth)
    assert torch.equal(out_depth, depth)
    assert not torch.allclose(out_image, normalize(image))


def test_resize_pair_uses_nearest_depth() -> None:
    image, depth = pair(20, 30)
    depth[0, :, :5] = 0.0  # missing measurements must not blend into their neighbours
    small_image, small_depth = resize_pair(image, depth, (10, 15))
    assert small_image.shape == (3, 10, 15)
    assert small_depth.shape == (1, 10, 15)
    assert set(small_depth.unique().tolist()) <= set(depth.unique().tolist())


def test_bad_pairs_are_refused() -> None:
    image, depth = pair()
    with pytest.raises(ValueError, match="the depth map is 20x29 but its image is 20x30"):
        DepthTransform()(image, depth[..., :-1])
    with pytest.raises(ValueError, match=r"depth map of shape \(1, H, W\)"):
        DepthTransform()(image, depth[0])
    with pytest.raises(ValueError, match="larger than the 20x30 pair"):
        DepthTransform(crop_size=(28, 28))(image, depth)
    with pytest.raises(ValueError, match="probability"):
        DepthTransform(flip=1.5)
    with pytest.raises(ValueError, match="resize_pair"):
        resize_pair(image, depth[..., :-1], 10)
