from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads import create_backbone
from dinov2_heads.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    get_preset,
    list_presets,
    normalize,
    pil_to_tensor,
)
from dinov2_heads.data.functional import check_mean_std

from .conftest import noise_image


def official_eval_reference(image: Image.Image) -> torch.Tensor:
    """The official evaluation transform, spelled out with Pillow and NumPy.

    torchvision's Resize(256, BICUBIC) on a PIL image is Pillow's resize to a shorter side of
    256 (longer side truncated); CenterCrop(224) rounds its offsets; ToTensor divides by 255.
    """
    width, height = image.size
    size = (int(256 * width / height), 256) if height <= width else (256, int(256 * height / width))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    top = round((resized.height - 224) / 2.0)
    left = round((resized.width - 224) / 2.0)
    pixels = np.asarray(resized, dtype=np.float32)[top : top + 224, left : left + 224] / 255
    normalised = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(normalised.astype(np.float32)).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(375, 500), (520, 300), (300, 300)])
def test_official_eval_matches_the_official_transform(size: tuple[int, int]) -> None:
    image = noise_image(*size)
    ours = get_preset("official_eval")(image)
    reference = official_eval_reference(image)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert ours.dtype == torch.float32
    # One grey level, after dividing by the smallest std.
    assert (ours - reference).abs().max() <= 1 / 255 / min(IMAGENET_STD) + 1e-5


def test_vehicle_crop_preset() -> None:
    preset = get_preset("vehicle_crop")
    assert preset.output_size == (126, 252)
    assert preset.grid == (9, 18)
    out = preset(noise_image(100, 260))
    assert out.shape == (3, 126, 252)
    create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2).check_input(out[None])


def test_presets_listed_and_unknown_names_rejected() -> None:
    assert list_presets() == ["official_eval", "vehicle_crop"]
    with pytest.raises(ValueError, match=r"unknown preprocessing preset 'imagenet'.*official_eval"):
        get_preset("imagenet")


def test_tensor_inputs_match_pil_input() -> None:
    image = noise_image(60, 90)
    preprocess = Preprocess(resize=(28, 42))
    from_pil = preprocess(image)
    pixels = pil_to_tensor(image)
    assert torch.equal(preprocess(pixels), from_pil)
    batch = preprocess(torch.stack([pixels, pixels]))
    assert batch.shape == (2, 3, 28, 42)
    assert torch.equal(batch[1], from_pil)
    as_float = preprocess(pixels.float() / 255)
    assert (as_float - from_pil).abs().mean() < 0.01


def test_invalid_sizes_name_the_fix() -> None:
    with pytest.raises(ValueError, match="125x250 is not a multiple of patch size 14; use 126x252"):
        Preprocess(resize=(125, 250))
    with pytest.raises(ValueError, match="add crop"):
        Preprocess(resize=256)
    with pytest.raises(ValueError, match="one value per RGB channel"):
        Preprocess(resize=(14, 14), mean=(0.5, 0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Preprocess(resize=(14, 14), std=(0.2, 0.0, 0.2))


def test_for_size_rounds_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        preprocess = Preprocess.for_size((125, 250))
    assert preprocess.output_size == (126, 252)
    assert "126x252" in caplog.text
    assert Preprocess(resize=(28, 28)).replace(crop=(14, 14)).output_size == (14, 14)


def test_draft_is_off_by_default_and_described_only_when_on() -> None:
    plain = get_preset("official_eval")
    assert plain.draft is False
    # The description stores made before the option existed recorded, unchanged.
    assert plain.description() == {
        "type": "Preprocess",
        "resize": 256,
        "crop": (224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "patch_size": 14,
    }
    drafted = plain.replace(draft=True)
    assert drafted.description() == {**plain.description(), "draft": True}
    assert drafted != plain
    with pytest.raises(TypeError, match="draft must be True or False, got 'yes'"):
        Preprocess(resize=(126, 252), draft="yes")  # type: ignore[arg-type]


def test_decode_size_is_the_size_the_resize_produces() -> None:
    assert get_preset("official_eval").decode_size(4000, 3000) is None  # draft off
    drafted = get_preset("official_eval").replace(draft=True)
    assert drafted.decode_size(4000, 3000) == (341, 256)  # (width, height)
    assert drafted.decode_size(3000, 4000) == (256, 341)
    assert drafted.decode_size(100, 50) == (512, 256)  # enlarging: no reduction can keep it
    fixed = Preprocess(resize=(126, 252), draft=True)
    assert fixed.decode_size(4000, 3000) == (252, 126)


@pytest.mark.parametrize(
    "preprocess",
    [
        Preprocess(resize=256, crop=(224, 224)),
        Preprocess(resize=(126, 252)),
        Preprocess(resize=(28, 42)),
        Preprocess(resize=(700, 1400)),  # enlarging
    ],
    ids=["official", "vehicle", "small", "enlarge"],
)
def test_pil_input_gives_exactly_the_pixels_of_a_contiguous_tensor(preprocess: Preprocess) -> None:
    # A Pillow image is resized from its interleaved pixels; the result is the same, bit for bit.
    for height, width, mode in [
        (375, 500, "RGB"),
        (301, 403, "RGB"),
        (126, 252, "L"),
        (28, 42, "P"),
    ]:
        image = noise_image(height, width, seed=height).convert(mode)
        from_pil = preprocess(image)
        assert from_pil.is_contiguous()
        assert torch.equal(from_pil, preprocess(pil_to_tensor(image))), (height, width, mode)


# ---------------------------------------------------------------------- normalize=False


@pytest.mark.parametrize(
    "preprocess",
    [Preprocess(resize=256, crop=(224, 224)), Preprocess(resize=(28, 42))],
    ids=["official", "small"],
)
def test_without_normalising_the_pixels_are_handed_on_as_uint8(preprocess: Preprocess) -> None:
    pixels_only = preprocess.replace(normalize=False)
    for image in (noise_image(301, 403, seed=3), noise_image(126, 252, seed=4).convert("L")):
        pixels = pixels_only(image)
        assert pixels.dtype == torch.uint8
        assert pixels.shape == (3, *preprocess.output_size)
        assert pixels.is_contiguous()
        # Normalising them afterwards is the whole preprocessing, bit for bit.
        assert torch.equal(normalize(pixels, preprocess.mean, preprocess.std), preprocess(image))
        assert torch.equal(pixels_only(pil_to_tensor(image)), pixels)
    batch = torch.stack([pil_to_tensor(noise_image(60, 90, seed=s)) for s in range(3)])
    handed_on = pixels_only(batch)
    assert handed_on.dtype == torch.uint8
    assert handed_on.shape == (3, 3, *preprocess.output_size)
    assert torch.equal(normalize(handed_on), preprocess(batch))


def test_float_images_cannot_be_handed_on_as_uint8() -> None:
    pixels_only = Preprocess(resize=(28, 42), normalize=False)
    for image in (torch.rand(3, 60, 90), torch.rand(2, 3, 60, 90, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"hands on uint8 pixels 0\.\.255, but got a torch"):
            pixels_only(image)
    with pytest.raises(ValueError, match=r"or keep normalize=True for float images"):
        pixels_only(torch.rand(3, 60, 90))
    with pytest.raises(TypeError, match="normalize must be True or False, got 1"):
        Preprocess(resize=(28, 42), normalize=1)  # type: ignore[arg-type]


def test_where_normalisation_happens_is_not_part_of_the_description() -> None:
    # A feature store compares descriptions: one made either way resumes the other way.
    for preset in (get_preset("official_eval"), get_preset("vehicle_crop").replace(draft=True)):
        deferred = preset.replace(normalize=False)
        assert deferred.description() == preset.description()
        assert "normalize" not in preset.description()
    assert get_preset("official_eval").normalize is True


def test_mean_and_std_are_checked_by_the_shared_check() -> None:
    mean, std = check_mean_std([0.5, 0.25, 0.125], torch.tensor([1.0, 2.0, 4.0]))
    assert (mean, std) == ((0.5, 0.25, 0.125), (1.0, 2.0, 4.0))
    with pytest.raises(ValueError, match="mean values must be finite"):
        Preprocess(resize=(14, 14), mean=(0.5, float("nan"), 0.5))
    with pytest.raises(TypeError, match=r"std must be three numbers \(R, G, B\) such as \(0\.229"):
        Preprocess(resize=(14, 14), std="0.2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mean must be three numbers"):
        check_mean_std(0.5, IMAGENET_STD)  # type: ignore[arg-type]
