from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dinov2_heads.data import (
    ImageFolderDataset,
    Preprocess,
    UnreadableImageError,
    get_preset,
    load_image,
    pil_to_tensor,
)

from .conftest import write_image, write_truncated
from .test_loading import write_photo

SMALL = Preprocess(resize=(14, 28))


def test_classes_are_sorted_folder_names(image_tree: Path) -> None:
    dataset = ImageFolderDataset(image_tree, SMALL)
    assert dataset.classes == ("ant", "bee", "cat")
    assert dataset.class_to_idx == {"ant": 0, "bee": 1, "cat": 2}
    assert dataset.vocabularies == {"label": ("ant", "bee", "cat")}
    assert dataset.num_classes == 3
    # Hidden files and the text file are ignored; the nested image is found.
    assert len(dataset) == 6
    assert dataset.targets == [0, 0, 1, 1, 2, 2]
    assert dataset.paths[5] == image_tree / "cat" / "deeper" / "c2.jpg"
    assert dataset.skipped == ()


def test_items_are_transformed_images_and_indices(image_tree: Path) -> None:
    dataset = ImageFolderDataset(image_tree, SMALL, label_name="species")
    image, label = dataset[2]
    assert label == 1
    assert torch.equal(image, SMALL(load_image(dataset.paths[2])))
    assert dataset.vocabularies == {"species": ("ant", "bee", "cat")}
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 14, 28)
    assert labels.tolist() == [0, 0, 1, 1]


def test_default_transform_is_the_official_eval(image_tree: Path) -> None:
    image, _ = ImageFolderDataset(image_tree)[0]
    assert image.shape == (3, 224, 224)


def test_plain_tensor_transform(image_tree: Path) -> None:
    image, _ = ImageFolderDataset(image_tree, pil_to_tensor)[0]
    assert image.dtype == torch.uint8


def test_unreadable_images_skipped_with_a_record(
    image_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = write_truncated(image_tree / "bee" / "broken.jpg")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(image_tree, SMALL, on_error="skip")
    assert len(dataset) == 6
    assert [record.path for record in dataset.skipped] == [broken]
    assert str(broken) in caplog.text
    assert broken not in dataset.paths
    assert dataset.targets == [0, 0, 1, 1, 2, 2]


def test_unreadable_images_raise_on_load(image_tree: Path) -> None:
    broken = write_truncated(image_tree / "ant" / "a0.jpg")
    dataset = ImageFolderDataset(image_tree, SMALL)
    assert len(dataset) == 7
    assert dataset.paths[0] == broken
    with pytest.raises(UnreadableImageError, match=r"a0\.jpg"):
        dataset[0]


def test_empty_class_keeps_its_index(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(tmp_path / "b" / "1.png")
    (tmp_path / "a").mkdir()
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, SMALL)
    assert dataset.classes == ("a", "b")
    assert dataset.targets == [1]
    assert "holds no images" in caplog.text


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    write_image(tmp_path / "flat.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path)


def test_a_draft_transform_decodes_large_jpegs_at_reduced_size(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "big").mkdir(parents=True)
    write_photo(root / "big" / "photo.jpg", height=1200, width=1600)
    write_image(root / "big" / "photo.png", height=1200, width=1600)
    write_image(root / "small" / "photo.jpg", height=375, width=500)
    plain = get_preset("official_eval")
    full = ImageFolderDataset(root, plain)
    drafted = ImageFolderDataset(root, plain.replace(draft=True))
    std = torch.tensor(plain.std).view(3, 1, 1)
    for index, path in enumerate(full.paths):
        expected, label = full[index]
        image, same_label = drafted[index]
        assert label == same_label
        if path.suffix == ".jpg" and path.parent.name == "big":
            levels = (image - expected).abs() * std * 255
            assert 0 < levels.max() <= 4
        else:
            assert torch.equal(image, expected), path
