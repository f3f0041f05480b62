"""A small synthetic "vehicles" data set: body type, colour, orientation, and an emblem brand.

Each image shows one vehicle-like shape drawn with Pillow on a plain street-like background.
Four labels describe it:

- ``body``: ``bus``, ``sedan``, ``suv`` or ``truck`` (the silhouette).
- ``colour``: one of eight paint colours (shade varies a little per image).
- ``orientation``: ``front``, ``rear``, ``left`` or ``right`` (which side faces the camera;
  ``left`` means the vehicle points left).
- ``brand``: decided only by the shape of a small emblem (about one patch wide at 126x252),
  the fine-grained label that needs patch tokens rather than the class token.

Each image also has a part mask (:meth:`SyntheticVehicles.part_mask`, for segmentation heads)
and a depth map in metres (:meth:`SyntheticVehicles.depth_map`: a ground plane, the vehicle
standing on it, background walls, no depth on the sky), drawn from the same layout as the
picture (:mod:`dinov2_heads.demo.scene`), so segmentation and depth heads train offline too
(:meth:`SyntheticVehicles.parts`, :class:`~dinov2_heads.demo.depth_pairs.SyntheticDepthPairs`).

Image ``i`` depends only on ``(seed, i)``, so a set is reproducible and can be indexed in any
order. Rendering takes about 2 ms per 126x252 image on one CPU core.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.functional import _as_pair, nearest_valid_size, pil_to_tensor
from dinov2_heads.data.loading import require_pillow
from dinov2_heads.demo.drawing import PART_PALETTE, PARTS, Colour
from dinov2_heads.demo.folders import write_tree
from dinov2_heads.demo.scene import Scene, draw_scene, plan_scene
from dinov2_heads.demo.street_depth import scene_depth
from dinov2_heads.labels import MISSING_LABEL

if TYPE_CHECKING:
    from PIL import Image

#: The label names, in the order of :attr:`SyntheticVehicles.label_columns`.
ATTRIBUTES: tuple[str, ...] = ("body", "colour", "orientation", "brand")
BODY_TYPES: tuple[str, ...] = ("bus", "sedan", "suv", "truck")
ORIENTATIONS: tuple[str, ...] = ("front", "left", "rear", "right")
#: Paint colours and their base RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "blue": (35, 75, 190),
    "green": (40, 140, 60),
    "orange": (235, 125, 25),
    "red": (200, 30, 35),
    "silver": (165, 168, 175),
    "white": (238, 238, 235),
    "yellow": (240, 205, 40),
}
#: Brand names and the emblem shape each one carries; a set uses the first ``num_brands``.
BRANDS: dict[str, str] = {
    "arcos": "disc",
    "belmont": "ring",
    "corvo": "triangle",
    "delta": "triangle_down",
    "elan": "square",
    "falco": "diamond",
    "garnet": "plus",
    "helix": "cross",
    "ion": "star",
    "juno": "bars",
    "kestrel": "chevron",
    "lumen": "bowtie",
}


@dataclass(frozen=True)
class Vehicle:
    """The true attributes of one synthetic image (before any label is blanked)."""

    body: str
    colour: str
    orientation: str
    brand: str


class SyntheticVehicles(Dataset[tuple[Tensor, dict[str, int]]]):
    """A reproducible synthetic vehicles set; items are ``(image (3, H, W), labels)``.

    ``labels`` maps each of ``body``, ``colour``, ``orientation``, ``brand`` to a class index,
    or to -100 (:data:`~dinov2_heads.data.MISSING_LABEL`) where the label was blanked to
    imitate missing annotations. The true attributes stay available from :meth:`vehicle`.

    Args:
        num_images: How many images the set holds.
        seed: Everything about image ``i`` follows from ``(seed, i)``.
        size: The image (H, W) in pixels; default 126x252, the vehicle-crop preset.
        num_brands: How many brands (emblem shapes) to use, 2 to 12.
        missing: The fraction of labels to blank, one number for all attributes or a mapping
            per attribute (absent attributes keep every label).
        emblem_size: The emblem's diameter as a fraction of the image height (0.14 is about
            one 14-pixel patch at 126 pixels high).
        transform: PIL image -> (3, H, W); default a plain ImageNet normalisation at ``size``
            (rounded to a multiple of 14 if needed).

    Example:
        ``SyntheticVehicles(64, seed=0)[0]`` is a (3, 126, 252) float tensor and a dict like
        ``{"body": 2, "colour": 5, "orientation": 0, "brand": 7}``.
    """

    label_columns: tuple[str, ...] = ATTRIBUTES

    def __init__(
        self,
        num_images: int = 256,
        *,
        seed: int = 0,
        size: int | tuple[int, int] = (126, 252),
        num_brands: int = 10,
        missing: float | Mapping[str, float] = 0.0,
        emblem_size: float = 0.14,
        transform: Callable[[Image.Image], Tensor] | None = None,
    ) -> None:
        from dinov2_heads.data.preprocess import Preprocess

        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 2 <= num_brands <= len(BRANDS):
            raise ValueError(f"num_brands must be between 2 and {len(BRANDS)}, got {num_brands}")
        if not 0.0 < emblem_size < 0.5:
            raise ValueError(
                f"emblem_size is a fraction of the height in (0, 0.5), got {emblem_size}"
            )
        self.num_images = num_images
        self.seed = seed
        self.size = _as_pair(size, "size")
        self.emblem_size = emblem_size
        self.brands: tuple[str, ...] = tuple(list(BRANDS)[:num_brands])
        rates = (
            dict.fromkeys(ATTRIBUTES, float(missing))
            if isinstance(missing, int | float)
            else dict(missing)
        )
        unknown = sorted(set(rates) - set(ATTRIBUTES))
        if unknown:
            raise ValueError(f"missing names unknown attributes {unknown}; use {list(ATTRIBUTES)}")
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"missing[{name!r}] must be a fraction in [0, 1], got {rate}")
        self.missing: dict[str, float] = {a: float(rates.get(a, 0.0)) for a in ATTRIBUTES}
        self.transform = (
            transform if transform is not None else Preprocess(resize=nearest_valid_size(self.size))
        )

    # ------------------------------------------------------------------ labels

    @property
    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """Attribute -> class names; index i of an attribute is ``vocabularies[name][i]``."""
        return {
            "body": BODY_TYPES,
            "colour": tuple(COLOURS),
            "orientation": ORIENTATIONS,
            "brand": self.brands,
        }

    @property
    def num_classes(self) -> dict[str, int]:
        """Attribute -> number of classes K."""
        return {name: len(names) for name, names in self.vocabularies.items()}

    def _rng(self, index: int, stream: str) -> random.Random:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} is out of range for {self.num_images} images")
        # A string seed is hashed with SHA-512, so streams are the same on every run and platform.
        return random.Random(f"vehicles:{stream}:{self.seed}:{index}")

    def vehicle(self, index: int) -> Vehicle:
        """The true attributes of image ``index``."""
        rng = self._rng(index, "labels")
        return Vehicle(
            body=rng.choice(BODY_TYPES),
            colour=rng.choice(tuple(COLOURS)),
            orientation=rng.choice(ORIENTATIONS),
            brand=rng.choice(self.brands),
        )

    def labels(self, index: int) -> dict[str, int]:
        """Class indices of image ``index``, -100 where a label was blanked."""
        vehicle = self.vehicle(index)
        rng = self._rng(index, "missing")
        result: dict[str, int] = {}
        for name, names in self.vocabularies.items():
            blank = rng.random() < self.missing[name]
            result[name] = MISSING_LABEL if blank else names.index(getattr(vehicle, name))
        return result

    # ------------------------------------------------------------------ images

    def scene(self, index: int) -> Scene:
        """The layout of image ``index``: horizon, buildings, vehicle box and colours.

        The picture, :meth:`vehicle_mask`, :meth:`part_mask` and :meth:`depth_map` are all
        drawn from it, so they line up.
        """
        vehicle = self.vehicle(index)
        return plan_scene(
            self._rng(index, "scene"),
            size=self.size,
            body=vehicle.body,
            orientation=vehicle.orientation,
            paint=COLOURS[vehicle.colour],
            emblem=BRANDS[vehicle.brand],
            emblem_size=self.emblem_size,
        )

    def render(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB Pillow image of ``size``."""
        return draw_scene(self.scene(index))

    def vehicle_mask(self, index: int) -> Tensor:
        """(H, W) bool: the pixels the vehicle covers in image ``index`` (half or more of each)."""
        return pil_to_tensor(draw_scene(self.scene(index), "silhouette"))[0] > 127

    def depth_map(self, index: int) -> Tensor:
        """(1, H, W) float32 depth in metres of image ``index``, 0 on the sky.

        See :func:`~dinov2_heads.demo.street_depth.scene_depth` for the geometry.
        """
        return scene_depth(self.scene(index), self.vehicle_mask(index))

    def image_tensor(self, index: int) -> Tensor:
        """Image ``index`` as ``uint8`` (3, H, W), before any transform."""
        return pil_to_tensor(self.render(index))

    # ------------------------------------------------------------------ dataset

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, int]]:
        """The transformed image (3, H, W) and its labels (-100 where blanked)."""
        if -self.num_images <= index < 0:
            index += self.num_images
        return self.transform(self.render(index)), self.labels(index)

    def batches(self, batch_size: int = 64) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """The whole set in order, as (B, 3, H, W) images and ``{attribute: (B,) int64}``."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, self.num_images, batch_size):
            items = [self[i] for i in range(start, min(start + batch_size, self.num_images))]
            images = torch.stack([image for image, _ in items])
            labels = {
                name: torch.tensor([record[name] for _, record in items], dtype=torch.int64)
                for name in ATTRIBUTES
            }
            yield images, labels

    # ------------------------------------------------------------------ files

    def write_folder(
        self, root: str | os.PathLike[str], *, label: str = "brand", image_format: str = "png"
    ) -> Path:
        """Write the set as an image folder ``root/<class name>/<index>.png``, one class per label.

        The folder layout cannot say "unknown", so every image goes under its true ``label``
        even where :attr:`missing` blanks it. The folder appears complete or not at all.

        Returns:
            ``root``.
        """
        if label not in ATTRIBUTES:
            raise ValueError(f"label must be one of {list(ATTRIBUTES)}, got {label!r}")

        def fill(staging: Path) -> None:
            for name in self.vocabularies[label]:
                (staging / name).mkdir()
            for index in range(self.num_images):
                name = getattr(self.vehicle(index), label)
                self.render(index).save(staging / name / f"{index:06d}.{image_format}")

        return write_tree(Path(root), fill)

    def write_manifest(
        self,
        root: str | os.PathLike[str],
        *,
        manifest_format: Literal["csv", "json"] = "csv",
        image_format: str = "png",
        indices: Sequence[int] | None = None,
    ) -> Path:
        """Write the images to ``root/images/`` and a manifest of all four labels beside them.

        Blanked labels are empty cells (CSV) or ``null`` (JSON); image paths are relative to
        the manifest, so :class:`~dinov2_heads.data.ManifestDataset` reads it back as is. The
        folder appears complete or not at all.

        Args:
            root: The folder to create.
            manifest_format: ``"csv"`` or ``"json"``.
            image_format: The images' file format (their suffix).
            indices: The images to write, in this order (``range(10, 20)``: a part of the set);
                ``None``: all of them. Files are named after their index (``000010.png``).

        Returns:
            The manifest path, ``root/manifest.csv`` or ``root/manifest.json``.
        """
        if manifest_format not in ("csv", "json"):
            raise ValueError(f"manifest_format must be 'csv' or 'json', got {manifest_format!r}")
        chosen = range(self.num_images) if indices is None else indices
        outside = [index for index in chosen if not 0 <= index < self.num_images]
        if outside:
            raise ValueError(
                f"indices must be in 0..{self.num_images - 1} (the set's images), got {outside[0]}"
            )
        filename = f"manifest.{manifest_format}"

        def fill(staging: Path) -> None:
            (staging / "images").mkdir()
            rows: list[dict[str, Any]] = []
            for index in chosen:
                relative = f"images/{index:06d}.{image_format}"
                self.render(index).save(staging / relative)
                row: dict[str, Any] = {"path": relative}
                for name, value in self.labels(index).items():
                    row[name] = None if value == MISSING_LABEL else self.vocabularies[name][value]
                rows.append(row)
            (staging / filename).write_bytes(_manifest_bytes(rows, manifest_format))

        return write_tree(Path(root), fill) / filename

    # ------------------------------------------------------------------ part masks

    def part_mask(self, index: int) -> Tensor:
        """(H, W) int64 part of each pixel of image ``index``: an index into :data:`PARTS`.

        0 background, 1 body (paint, lamps, grille, plates), 2 windows, 3 wheels, 4 emblem;
        drawn with the same shapes as the image, so parts line up with its pixels.
        """
        mask = draw_scene(self.scene(index), "parts")
        width, height = mask.size
        pixels = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8)
        return pixels.reshape(height, width).long()

    def parts(self, transform: JointTransform | None = None) -> SyntheticVehicleParts:
        """This set as a segmentation set: items ``(image (3, H, W), part mask (H, W))``."""
        return SyntheticVehicleParts(self, transform)

    def write_parts(self, root: str | os.PathLike[str], *, image_format: str = "png") -> Path:
        """Write ``root/images/<index>.png`` and palette PNG masks ``root/masks/<index>.png``.

        :meth:`~dinov2_heads.data.SegmentationDataset.from_folders` reads them back; the folder
        appears complete or not at all.

        Returns:
            ``root``.
        """
        pil = require_pillow()
        palette = [channel for colour in PART_PALETTE for channel in colour]

        def fill(staging: Path) -> None:
            (staging / "images").mkdir()
            (staging / "masks").mkdir()
            for index in range(self.num_images):
                self.render(index).save(staging / "images" / f"{index:06d}.{image_format}")
                mask = draw_scene(self.scene(index), "parts")
                paletted = pil.Image.frombytes("P", mask.size, mask.tobytes())
                paletted.putpalette(palette)
                paletted.save(staging / "masks" / f"{index:06d}.png")

        return write_tree(Path(root), fill)


#: (image, mask) -> (image (3, H, W), mask (H, W)), as ``SegmentationTransform``.
JointTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class SyntheticVehicleParts(Dataset[tuple[Tensor, Tensor]]):
    """Vehicle part segmentation on :class:`SyntheticVehicles` images.

    Items are ``(image (3, H, W), mask (H, W) int64)`` with the :data:`PARTS` indices. Without
    a ``transform`` the image gets the set's own transform (ImageNet normalisation at its size)
    and the mask is returned as drawn.

    Args:
        vehicles: The images.
        transform: Moves image (``uint8`` (3, H, W)) and mask together, such as
            :class:`~dinov2_heads.data.SegmentationTransform` for training.
    """

    class_names: tuple[str, ...] = PARTS
    palette: tuple[Colour, ...] = PART_PALETTE

    def __init__(self, vehicles: SyntheticVehicles, transform: JointTransform | None = None):
        self.vehicles = vehicles
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """K = 5 parts."""
        return len(PARTS)

    def __len__(self) -> int:
        return len(self.vehicles)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if -len(self) <= index < 0:
            index += len(self)
        mask = self.vehicles.part_mask(index)
        if self.transform is not None:
            return self.transform(self.vehicles.image_tensor(index), mask)
        image = self.vehicles.transform(self.vehicles.render(index))
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            # The default transform rounds the size to a multiple of 14: follow it.
            resized = torch.nn.functional.interpolate(
                mask[None, None].float(), size=image.shape[-2:], mode="nearest-exact"
            )
            mask = resized[0, 0].long()
        return image, mask


def _manifest_bytes(rows: list[dict[str, Any]], manifest_format: str) -> bytes:
    if manifest_format == "json":
        return (json.dumps(rows, indent=1) + "\n").encode("utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", *ATTRIBUTES], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return buffer.getvalue().encode("utf-8")
