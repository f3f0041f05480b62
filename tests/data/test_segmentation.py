"""Segmentation data: masks read as indices, image/mask pairs, joint transforms."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads.data import (
    IGNORE_LABEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    SegmentationTransform,
    UnreadableImageError,
    load_mask,
    normalize,
)
from tests.data.conftest import write_image

VOC_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def indices(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, (height, width)).astype(np.uint8)
    mask[0, :5] = IGNORE_LABEL
    return mask


def write_palette_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, "P")
    palette = [c for colour in VOC_COLOURS for c in colour] + [224, 224, 192] * 253
    image.putpalette(palette)
    image.save(path)
    return path


# ---------------------------------------------------------------------- masks


def test_palette_png_reads_as_indices_not_colours(tmp_path: Path) -> None:
    mask = indices()
    loaded = load_mask(write_palette_mask(tmp_path / "m.png", mask))
    assert loaded.dtype == torch.int64
    assert loaded.shape == (20, 30)
    assert torch.equal(loaded, torch.from_numpy(mask).long())


def test_grey_and_16_bit_masks(tmp_path: Path) -> None:
    mask = indices()
    Image.fromarray(mask, "L").save(tmp_path / "grey.png")
    assert torch.equal(load_mask(tmp_path / "grey.png"), torch.from_numpy(mask).long())
    wide = (mask.astype(np.uint16) * 300).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # 16-bit greyscale PNG
    assert torch.equal(load_mask(tmp_path / "wide.png"), torch.from_numpy(wide.astype(np.int64)))


def test_colour_masks_need_a_palette(tmp_path: Path) -> None:
    mask = indices()
    mask[mask == IGNORE_LABEL] = 0
    rgb = np.array(VOC_COLOURS, dtype=np.uint8)[mask]
    Image.fromarray(rgb, "RGB").save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour.png: a colour \(RGB\) mask needs palette="):
        load_mask(tmp_path / "colour.png")
    loaded = load_mask(tmp_path / "colour.png", palette=VOC_COLOURS)
    assert torch.equal(loaded, torch.from_numpy(mask).long())
    with pytest.raises(ValueError, match=r"not in the palette: \(0, 128, 0\)"):
        load_mask(tmp_path / "colour.png", palette=VOC_COLOURS[:2])


def test_unreadable_mask(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError) as caught:
        load_mask(tmp_path / "bad.png")
    # Named as a mask; load_mask has no on_error to advise.
    assert str(caught.value).startswith(f"cannot read mask {tmp_path / 'bad.png'}: ")
    assert str(caught.value).endswith("; fix or replace the file")
    assert caught.value.what == "mask"


# ---------------------------------------------------------------------- datasets


def pairs(root: Path, count: int = 3) -> tuple[Path, Path]:
    for i in range(count):
        write_image(root / "images" / "sub" / f"{i}.jpg", seed=i)
        write_palette_mask(root / "masks" / "sub" / f"{i}.png", indices(seed=i))
    return root / "images", root / "masks"


def test_folders_pair_images_with_masks(tmp_path: Path) -> None:
    images, masks = pairs(tmp_path)
    dataset = SegmentationDataset.from_folders(images, masks)
    assert len(dataset) == 3
    image, mask = dataset[1]
    assert image.shape == (3, 20, 30)
    assert image.dtype == torch.float32
    assert torch.equal(mask, torch.from_numpy(indices(seed=1)).long())
    # The default transform only normalises.
    raw = torch.from_numpy(np.array(Image.open(images / "sub" / "1.jpg"))).permute(2, 0, 1)
    torch.testing.assert_close(image, normalize(raw.float() / 255, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("which", ["image", "mask"])
def test_an_unreadable_file_of_a_pair_advises_what_a_dataset_user_can_do(
    tmp_path: Path, which: str
) -> None:
    images, masks = pairs(tmp_path)
    dataset = SegmentationDataset.from_folders(images, masks)
    broken = (dataset.images if which == "image" else dataset.masks)[1]
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(UnreadableImageError) as caught:
        dataset[1]
    message = str(caught.value)
    assert message.startswith(f"cannot read {which} {broken}: ")
    # SegmentationDataset has no on_error: the advice is what can be done with the dataset.
    assert "on_error" not in message
    assert message.endswith(
        "; fix or replace the file, or leave its pair out of the dataset (both files from the "
        "folders, or its entry from the lists or the manifest)"
    )
    # It crosses DataLoader worker processes whole.
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.what, copy.path) == (message, which, broken)
    assert dataset[0][0].shape[0] == 3  # the other pairs still read


def test_missing_masks_are_listed(tmp_path: Path) -> None:
    images, masks = pairs(tmp_path)
    (masks / "sub" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 images have no mask .*2\.png"):
        SegmentationDataset.from_folders(images, masks)


def test_manifest(tmp_path: Path) -> None:
    pairs(tmp_path)
    rows = [{"image": f"images/sub/{i}.jpg", "mask": f"masks/sub/{i}.png"} for i in range(3)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    dataset = SegmentationDataset.from_manifest(tmp_path / "train.json")
    assert torch.equal(dataset[2][1], torch.from_numpy(indices(seed=2)).long())
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "images/sub/0.jpg"}]))
    with pytest.raises(ValueError, match="the column 'mask' is missing"):
        SegmentationDataset.from_manifest(tmp_path / "bad.json")


def test_a_mask_of_another_size_is_named(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.jpg", height=20, width=30)
    mask = write_palette_mask(tmp_path / "a.png", indices(height=30, width=20))
    dataset = SegmentationDataset([image], [mask])
    with pytest.raises(
        ValueError, match=r"a\.jpg and .*a\.png: the mask is 30x20 .* image is 20x30"
    ):
        dataset[0]


# ---------------------------------------------------------------------- joint transforms


def test_transform_moves_image_and_mask_together() -> None:
    # The mask is the image's own red channel (as a class per pixel value), so any
    # misalignment between them shows.
    torch.manual_seed(0)
    red = torch.randint(0, 200, (1, 40, 50), dtype=torch.uint8)
    image = torch.cat([red, torch.zeros(2, 40, 50, dtype=torch.uint8)])
    transform = SegmentationTransform(crop_size=(28, 28), scale_range=None, flip=0.5, seed=0)
    for _ in range(6):
        x, mask = transform(image, red[0].long())
        assert x.shape == (3, 28, 28)
        assert mask.shape == (28, 28)
        recovered = ((x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).round().long()
        assert torch.equal(recovered, mask)


def test_rescale_uses_nearest_for_masks_and_pads_with_ignore() -> None:
    image = torch.rand(3, 10, 12)
    mask = torch.randint(0, 4, (10, 12))
    transform = SegmentationTransform(crop_size=(32, 32), scale_range=(2.0, 2.0), seed=1)
    x, out = transform(image, mask)
    assert x.shape == (3, 32, 32)
    assert set(out.unique().tolist()) <= set(mask.unique().tolist()) | {IGNORE_LABEL}
    assert (out == IGNORE_LABEL).sum() == 32 * 32 - 20 * 24  # the padding only
    assert (x[:, out == IGNORE_LABEL] == 0).all()


def test_seeded_transforms_repeat() -> None:
    image, mask = torch.rand(3, 30, 30), torch.randint(0, 3, (30, 30))
    a = SegmentationTransform(crop_size=14, scale_range=(0.5, 1.5), flip=0.5, seed=4)
    b = SegmentationTransform(crop_size=14, scale_range=(0.5, 1.5), flip=0.5, seed=4)
    for _ in range(3):
        (xa, ma), (xb, mb) = a(image, mask), b(image, mask)
        assert torch.equal(xa, xb)
        assert torch.equal(ma, mb)


def test_transform_errors() -> None:
    with pytest.raises(ValueError, match=r"mask is 5x5 \(HxW\) but its image is 4x4"):
        SegmentationTransform()(torch.rand(3, 4, 4), torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"mask of shape \(H, W\)"):
        SegmentationTransform()(torch.rand(3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        SegmentationTransform()(torch.rand(3, 4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="scale_range"):
        SegmentationTransform(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop_size"):
        SegmentationTransform(crop_size=(0, 4))
    with pytest.raises(ValueError, match="flip"):
        SegmentationTransform(flip=2.0)
