from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from dinov2_heads.data import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomResizedCrop,
    TrainTransform,
    denormalize,
    pil_to_tensor,
)

from .conftest import noise_image


def image() -> torch.Tensor:
    return pil_to_tensor(noise_image(40, 60))


def test_flip_probability_extremes() -> None:
    x = image()
    assert torch.equal(RandomHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)
    generator = torch.Generator().manual_seed(0)
    flips = sum(
        bool(torch.equal(RandomHorizontalFlip(0.5)(x, generator), x.flip(-1))) for _ in range(200)
    )
    assert 60 < flips < 140
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RandomHorizontalFlip(1.5)


def test_random_resized_crop_regions_follow_scale_and_ratio() -> None:
    crop = RandomResizedCrop((14, 28), scale=(0.3, 0.8))
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        top, left, h, w = crop.region(60, 90, generator)
        assert 0 <= top <= 60 - h
        assert 0 <= left <= 90 - w
        assert 0.3 * 0.9 <= h * w / (60 * 90) <= 0.8 * 1.1
        # Aspect relative to the 2:1 output lies within (3/4, 4/3), up to rounding.
        assert 3 / 4 * 0.9 <= (w / h) / 2 <= 4 / 3 * 1.1
    out = crop(image(), generator)
    assert out.shape == (3, 14, 28)
    assert out.dtype == torch.uint8


def test_random_resized_crop_falls_back_to_a_central_crop() -> None:
    # A 1:10 strip can never hold a 2:1 crop of 90 % of its area: the fallback is central.
    crop = RandomResizedCrop((14, 28), scale=(0.9, 1.0), ratio=(1.0, 1.0))
    top, left, h, w = crop.region(100, 10, torch.Generator().manual_seed(0))
    assert (h, w) == (5, 10)
    assert (top, left) == (47, 0)


def test_color_jitter_effects() -> None:
    x = image().float() / 255
    generator = torch.Generator().manual_seed(0)
    brighter = ColorJitter(brightness=0.5, contrast=0, saturation=0)(x, generator)
    ratio = brighter[x > 0.1] / x[x > 0.1]
    unclipped = brighter[x > 0.1] < 1
    assert torch.allclose(ratio[unclipped], ratio[unclipped][0].expand_as(ratio[unclipped]))
    assert 0.5 <= float(ratio[0]) <= 1.5
    grey = x.mean(0, keepdim=True).expand(3, -1, -1).contiguous()
    still_grey = ColorJitter(brightness=0, contrast=0, saturation=0.8, hue=0.3)(grey, generator)
    assert torch.allclose(still_grey, grey, atol=1e-5)
    jittered = ColorJitter(0.4, 0.4, 0.4, 0.1)(x, generator)
    assert jittered.shape == x.shape
    assert 0 <= float(jittered.min()) <= float(jittered.max()) <= 1
    assert not torch.allclose(jittered, x)


def test_hue_rotation_keeps_luma() -> None:
    x = 0.25 + 0.5 * torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    weights = torch.tensor([0.299, 0.587, 0.114])
    shifted = ColorJitter(0, 0, 0, hue=0.25)(x, torch.Generator().manual_seed(2))
    assert not torch.allclose(shifted, x, atol=1e-3)
    inside = (shifted > 0) & (shifted < 1)
    keep = inside.all(0)
    luma_before = torch.einsum("chw,c->hw", x, weights)[keep]
    luma_after = torch.einsum("chw,c->hw", shifted, weights)[keep]
    assert torch.allclose(luma_before, luma_after, atol=1e-4)


def test_jitter_rejects_bad_strengths() -> None:
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=1.5)
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.6)


def test_train_transform_is_seedable() -> None:
    picture = noise_image(50, 80)
    first = TrainTransform((28, 56), seed=3, hue=0.05)
    a = [first(picture) for _ in range(3)]
    again = TrainTransform((28, 56), seed=3, hue=0.05)
    b = [again(picture) for _ in range(3)]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[1])
    first.reseed(3)
    assert torch.equal(first(picture), a[0])
    other = TrainTransform((28, 56), seed=4, hue=0.05)(picture)
    assert not torch.equal(other, a[0])
    assert a[0].shape == (3, 28, 56)
    assert a[0].dtype == torch.float32
    shown = denormalize(a[0])
    assert 0 <= float(shown.min()) <= float(shown.max()) <= 1


def test_train_transform_pickles_for_worker_processes() -> None:
    transform = TrainTransform((14, 14), seed=0)
    copy = pickle.loads(pickle.dumps(transform))
    x = image()
    assert torch.equal(copy(x), transform(x))


def test_train_transform_without_jitter_or_flip_only_crops() -> None:
    transform = TrainTransform(
        (14, 14),
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=0.0,
        brightness=0,
        contrast=0,
        saturation=0,
        seed=0,
    )
    square = pil_to_tensor(noise_image(28, 28))
    out = transform(square)
    unseeded = TrainTransform((14, 14), flip=0.0, brightness=0, contrast=0, saturation=0)
    assert out.shape == (3, 14, 14)
    assert math.isclose(
        float(denormalize(out).mean()), float(square.float().mean() / 255), abs_tol=0.02
    )
    assert unseeded.generator is None


def test_train_transform_needs_a_valid_size() -> None:
    with pytest.raises(ValueError, match="use 126x252"):
        TrainTransform((125, 250))


class _SameImage(Dataset[torch.Tensor]):
    """Four items, all the same image through ``transform``: only the augmentation varies."""

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform
        self.image = image()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def _epochs(loader: DataLoader[torch.Tensor], count: int) -> list[torch.Tensor]:
    return [torch.cat(list(loader)) for _ in range(count)]


def test_seeded_train_transform_varies_across_workers_and_epochs() -> None:
    # Each epoch's workers start from copies of the main process's transform; a stream taken
    # from those copies as they are would repeat in every worker and every epoch.
    transform = TrainTransform((14, 14), seed=0)
    loader = DataLoader(_SameImage(transform), batch_size=2, num_workers=2)
    torch.manual_seed(0)
    first, second = _epochs(loader, 2)
    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[2])  # worker 0's first item, worker 1's first item
    torch.manual_seed(0)
    again = _epochs(loader, 2)
    assert torch.equal(again[0], first)
    assert torch.equal(again[1], second)
    torch.manual_seed(1)
    assert not torch.equal(_epochs(loader, 1)[0], first)


def _reseed_seven(worker_id: int) -> None:
    info = get_worker_info()
    assert info is not None
    assert isinstance(info.dataset, _SameImage)
    info.dataset.transform.reseed(7)


def test_reseed_in_a_worker_is_kept() -> None:
    loader = DataLoader(
        _SameImage(TrainTransform((14, 14), seed=0)),
        batch_size=2,
        num_workers=2,
        worker_init_fn=_reseed_seven,
    )
    batch = next(iter(loader))
    expected = TrainTransform((14, 14), seed=7)(image())
    assert torch.equal(batch[0], expected)
