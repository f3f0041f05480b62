from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from dinov2_heads.data import MISSING_LABEL, ImageFolderDataset, ManifestDataset, pil_to_tensor
from dinov2_heads.demo import ATTRIBUTES, BRANDS, SyntheticVehicles
from dinov2_heads.demo.drawing import Painter

SIZE = (42, 84)


def test_default_size_labels_and_vocabularies() -> None:
    dataset = SyntheticVehicles(4)
    image, labels = dataset[0]
    assert image.shape == (3, 126, 252)
    assert image.dtype == torch.float32
    assert set(labels) == set(ATTRIBUTES)
    assert dataset.vocabularies["body"] == ("bus", "sedan", "suv", "truck")
    assert dataset.vocabularies["orientation"] == ("front", "left", "rear", "right")
    assert len(dataset.vocabularies["colour"]) == 8
    assert dataset.num_classes == {"body": 4, "colour": 8, "orientation": 4, "brand": 10}
    vehicle = dataset.vehicle(0)
    for name in ATTRIBUTES:
        assert dataset.vocabularies[name][labels[name]] == getattr(vehicle, name)


def test_images_are_deterministic_and_independent_of_the_set_size() -> None:
    a = SyntheticVehicles(3, seed=7, size=SIZE)
    b = SyntheticVehicles(30, seed=7, size=SIZE)
    other = SyntheticVehicles(3, seed=8, size=SIZE)
    assert torch.equal(a.image_tensor(2), b.image_tensor(2))
    assert a.labels(2) == b.labels(2)
    assert not torch.equal(a.image_tensor(2), other.image_tensor(2))
    assert not torch.equal(a.image_tensor(0), a.image_tensor(1))
    assert a.render(0).size == (SIZE[1], SIZE[0])
    with pytest.raises(IndexError):
        a.render(3)


def test_every_class_occurs() -> None:
    dataset = SyntheticVehicles(400, num_brands=12)
    seen = {name: set() for name in ATTRIBUTES}
    for index in range(len(dataset)):
        for name, value in dataset.labels(index).items():
            seen[name].add(value)
    assert {name: len(values) for name, values in seen.items()} == dataset.num_classes


def test_missing_labels_are_blanked_at_the_requested_rate() -> None:
    dataset = SyntheticVehicles(2000, missing={"colour": 0.3, "brand": 0.1})
    counts = dict.fromkeys(ATTRIBUTES, 0)
    for index in range(len(dataset)):
        for name, value in dataset.labels(index).items():
            counts[name] += value == MISSING_LABEL
    assert counts["body"] == counts["orientation"] == 0
    assert 0.25 < counts["colour"] / 2000 < 0.35
    assert 0.07 < counts["brand"] / 2000 < 0.13
    # The true attributes stay available.
    assert dataset.vehicle(0) == SyntheticVehicles(1).vehicle(0)
    everything = SyntheticVehicles(50, missing=1.0)
    assert all(v == MISSING_LABEL for i in range(50) for v in everything.labels(i).values())


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="num_brands"):
        SyntheticVehicles(4, num_brands=13)
    with pytest.raises(ValueError, match="unknown attributes"):
        SyntheticVehicles(4, missing={"make": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SyntheticVehicles(4, missing=1.5)
    with pytest.raises(ValueError, match="emblem_size"):
        SyntheticVehicles(4, emblem_size=0.0)


def test_emblem_shapes_are_all_different() -> None:
    masks = {}
    for brand, shape in BRANDS.items():
        canvas = Image.new("RGB", (64, 64), (0, 0, 0))
        painter = Painter(ImageDraw.Draw(canvas), (0, 0, 64, 64))
        painter.emblem(0.5, 0.5, 60, shape)
        chrome = pil_to_tensor(canvas)[0] > 200  # the light shape on the dark badge
        masks[brand] = chrome.float()
        assert 0.05 < float(chrome.float().mean()) < 0.7, brand
    for (a, ma), (b, mb) in itertools.combinations(masks.items(), 2):
        assert float((ma - mb).abs().mean()) > 0.03, (a, b)


def test_vehicle_mask_covers_the_vehicle() -> None:
    dataset = SyntheticVehicles(6, size=SIZE)
    for index in range(6):
        mask = dataset.vehicle_mask(index)
        assert mask.shape == SIZE
        assert 0.1 < float(mask.float().mean()) < 0.9
        # The top corners are sky or buildings, never vehicle.
        assert not mask[0, 0]
        assert not mask[0, -1]


def test_batches_match_items() -> None:
    dataset = SyntheticVehicles(5, size=(28, 56), missing=0.5)
    batches = list(dataset.batches(2))
    assert [images.shape[0] for images, _ in batches] == [2, 2, 1]
    images, labels = batches[1]
    assert images.shape == (2, 3, 28, 56)
    assert torch.equal(images[1], dataset[3][0])
    assert {name: int(labels[name][1]) for name in ATTRIBUTES} == dataset.labels(3)


def test_sizes_that_are_not_multiples_of_14_are_rounded_for_the_backbone() -> None:
    dataset = SyntheticVehicles(1, size=(40, 80))
    assert dataset.render(0).size == (80, 40)
    assert dataset[0][0].shape == (3, 42, 84)


def test_write_folder_round_trips(tmp_path: Path) -> None:
    dataset = SyntheticVehicles(12, size=SIZE, num_brands=3)
    root = dataset.write_folder(tmp_path / "vehicles", label="brand")
    folder = ImageFolderDataset(root, pil_to_tensor)
    assert folder.classes == dataset.vocabularies["brand"]
    assert len(folder) == 12
    for path, target in zip(folder.paths, folder.targets, strict=True):
        index = int(path.stem)
        assert folder.classes[target] == dataset.vehicle(index).brand
    index = int(folder.paths[0].stem)
    assert torch.equal(folder[0][0], dataset.image_tensor(index))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError, match="not an empty folder"):
        dataset.write_folder(root)
    with pytest.raises(ValueError, match="label must be one of"):
        dataset.write_folder(tmp_path / "other", label="make")


@pytest.mark.parametrize("manifest_format", ["csv", "json"])
def test_write_manifest_round_trips(tmp_path: Path, manifest_format: str) -> None:
    dataset = SyntheticVehicles(10, size=SIZE, missing=0.3, seed=1)
    path = dataset.write_manifest(tmp_path / "set", manifest_format=manifest_format)  # type: ignore[arg-type]
    assert path == tmp_path / "set" / f"manifest.{manifest_format}"
    loaded = ManifestDataset(path, pil_to_tensor, vocabularies=dataset.vocabularies)
    assert loaded.label_columns == ATTRIBUTES
    expected = [[dataset.labels(i)[name] for name in ATTRIBUTES] for i in range(10)]
    assert loaded.labels.tolist() == expected
    assert MISSING_LABEL in loaded.labels
    assert torch.equal(loaded[4][0], dataset.image_tensor(4))
    if manifest_format == "json":
        rows = json.loads(path.read_text())
        assert any(value is None for row in rows for value in row.values())


def test_out_of_range_indices_are_named_as_given() -> None:
    vehicles = SyntheticVehicles(3, seed=0)
    assert vehicles[-3][1] == vehicles[0][1]
    with pytest.raises(IndexError, match=r"index -4 is out of range for 3 images"):
        vehicles[-4]
    with pytest.raises(IndexError, match=r"index 3 is out of range for 3 images"):
        vehicles[3]
