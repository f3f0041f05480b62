"""A small synthetic "vehicles" data set: body type, colour, orientation, and an emblem brand.

Each image shows one vehicle-like shape drawn with Pillow on a plain street-like background.
Four labels describe it:

- ``body``: ``bus``, ``sedan``, ``suv`` or ``truck`` (the silhouette).
- ``colour``: one of eight paint colours (shade varies a little per image).
- ``orientation``: ``front``, ``rear``, ``left`` or ``right`` (which side faces the camera;
  ``left`` means the vehicle points left).
- ``brand``: decided only by the shape of a small emblem (about one patch wide at 126x252),
  the fine-grained label that needs patch tokens rather than the class token.

Each image also has a depth map in metres (:func:`synthetic_depth`: a ground plane, the vehicle
standing on it, background walls, no depth on the sky), so depth heads train offline too
(:class:`SyntheticDepthPairs`).

Image ``i`` depends only on ``(seed, i)``, so a set is reproducible and can be indexed in any
order. Rendering takes about 2 ms per 126x252 image on one CPU core.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.functional import _as_pair, nearest_valid_size, pil_to_tensor, tensor_to_pil
from dinov2_heads.data.loading import require_pillow
from dinov2_heads.labels import MISSING_LABEL

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

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

_SUPERSAMPLE = 2
_PLATE = (30, 32, 36)
_CHROME = (228, 230, 236)
_GLASS = (42, 52, 68)
_TYRE = (18, 18, 18)
_HUB = (120, 120, 125)
_SKIES = ((150, 175, 200), (185, 195, 205), (120, 140, 160), (205, 190, 165), (160, 160, 150))
_GROUNDS = ((90, 90, 92), (110, 105, 100), (70, 72, 75), (125, 125, 120))

Colour = tuple[int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class Vehicle:
    """The true attributes of one synthetic image (before any label is blanked)."""

    body: str
    colour: str
    orientation: str
    brand: str


def _jitter(colour: Colour, rng: random.Random, amount: int) -> Colour:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)
    return (r, g, b)


class _Painter:
    """Draws in a vehicle's own box: u (0 = left, 1 = right) and v (0 = top, 1 = bottom).

    ``mirror`` flips u, so every side view is drawn facing right and mirrored for ``left``.
    In mask mode every vehicle colour is painted white, which gives the vehicle's silhouette;
    in parts mode each fill is painted with its part index (see :func:`_part_of`).
    """

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        box: tuple[float, float, float, float],
        *,
        mirror: bool = False,
        mask: bool = False,
        parts: bool = False,
    ) -> None:
        self.draw = draw
        self.left, self.top, self.width, self.height = box
        self.mirror = mirror
        self.mask = mask
        self.parts = parts

    def xy(self, u: float, v: float) -> Point:
        if self.mirror:
            u = 1.0 - u
        return (self.left + u * self.width, self.top + v * self.height)

    def fill(self, colour: Colour) -> Colour | int:
        if self.parts:
            return _part_of(colour)
        return 255 if self.mask else colour

    def rect(
        self, u0: float, v0: float, u1: float, v1: float, colour: Colour, radius: float = 0
    ) -> None:
        (x0, y0), (x1, y1) = self.xy(u0, v0), self.xy(u1, v1)
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if radius > 0:
            self.draw.rounded_rectangle(box, radius=radius * self.height, fill=self.fill(colour))
        else:
            self.draw.rectangle(box, fill=self.fill(colour))

    def polygon(self, points: Sequence[Point], colour: Colour) -> None:
        self.draw.polygon([self.xy(u, v) for u, v in points], fill=self.fill(colour))

    def ellipse(self, u: float, v: float, ru: float, rv: float, colour: Colour) -> None:
        (x0, y0), (x1, y1) = self.xy(u - ru, v - rv), self.xy(u + ru, v + rv)
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.draw.ellipse(box, fill=self.fill(colour))

    def wheel(self, u: float, v: float, radius: float) -> None:
        """A tyre and hub; ``radius`` is in units of the box height."""
        ru = radius * self.height / self.width
        self.ellipse(u, v, ru, radius, _TYRE)
        self.ellipse(u, v, ru * 0.45, radius * 0.45, _HUB)

    def emblem(self, u: float, v: float, size: float, shape: str) -> None:
        """A dark badge with a light ``shape`` on it; ``size`` (diameter) is in pixels."""
        cx, cy = self.xy(u, v)
        radius = size / 2
        self.draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=self.fill(_PLATE)
        )
        for kind, points in _emblem_shapes(shape):
            xy = [(cx + px * radius * 0.8, cy + py * radius * 0.8) for px, py in points]
            if kind == "ellipse":
                self.draw.ellipse((xy[0][0], xy[0][1], xy[1][0], xy[1][1]), fill=self.fill(_CHROME))
            elif kind == "hole":
                self.draw.ellipse((xy[0][0], xy[0][1], xy[1][0], xy[1][1]), fill=self.fill(_PLATE))
            else:
                self.draw.polygon(xy, fill=self.fill(_CHROME))


def _regular(count: int, radius: float, phase: float) -> list[Point]:
    return [
        (
            radius * math.cos(phase + 2 * math.pi * k / count),
            radius * math.sin(phase + 2 * math.pi * k / count),
        )
        for k in range(count)
    ]


def _box(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _rotated(points: list[Point], angle: float) -> list[Point]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _emblem_shapes(shape: str) -> list[tuple[str, list[Point]]]:
    """The parts of an emblem in its own [-1, 1] square: ("polygon" | "ellipse" | "hole", pts)."""
    up = -math.pi / 2
    if shape == "disc":
        return [("ellipse", [(-0.8, -0.8), (0.8, 0.8)])]
    if shape == "ring":
        return [("ellipse", [(-0.9, -0.9), (0.9, 0.9)]), ("hole", [(-0.5, -0.5), (0.5, 0.5)])]
    if shape == "triangle":
        return [("polygon", _regular(3, 1.0, up))]
    if shape == "triangle_down":
        return [("polygon", _regular(3, 1.0, -up))]
    if shape == "square":
        return [("polygon", _box(-0.65, -0.65, 0.65, 0.65))]
    if shape == "diamond":
        return [("polygon", _regular(4, 0.95, up))]
    if shape == "plus":
        return [
            ("polygon", _box(-0.9, -0.28, 0.9, 0.28)),
            ("polygon", _box(-0.28, -0.9, 0.28, 0.9)),
        ]
    if shape == "cross":
        bar = _box(-0.95, -0.25, 0.95, 0.25)
        return [("polygon", _rotated(bar, math.pi / 4)), ("polygon", _rotated(bar, -math.pi / 4))]
    if shape == "star":
        outer, inner = _regular(5, 1.0, up), _regular(5, 0.42, up + math.pi / 5)
        return [("polygon", [p for pair in zip(outer, inner, strict=True) for p in pair])]
    if shape == "bars":
        return [
            ("polygon", _box(-0.85, -0.7, 0.85, -0.2)),
            ("polygon", _box(-0.85, 0.2, 0.85, 0.7)),
        ]
    if shape == "chevron":
        return [
            (
                "polygon",
                [(-0.9, -0.6), (0.0, 0.25), (0.9, -0.6), (0.9, 0.05), (0.0, 0.9), (-0.9, 0.05)],
            )
        ]
    if shape == "bowtie":
        return [
            ("polygon", [(-0.95, -0.75), (0.0, 0.0), (-0.95, 0.75)]),
            ("polygon", [(0.95, -0.75), (0.0, 0.0), (0.95, 0.75)]),
        ]
    raise ValueError(f"unknown emblem shape {shape!r}")


# Per body type, facing the camera: roof top, belt line (roof meets body), roof inset at the top,
# wheel height, and the box's width / height.
_FRONT = {
    "sedan": (0.12, 0.47, 0.22, 0.14, 2.0),
    "suv": (0.05, 0.42, 0.13, 0.16, 1.65),
    "truck": (0.02, 0.46, 0.10, 0.18, 1.5),
    "bus": (0.02, 0.52, 0.02, 0.10, 1.1),
}
# Side views: the box's width / height.
_SIDE_ASPECT = {"sedan": 2.8, "suv": 2.4, "truck": 2.6, "bus": 3.0}


def _draw_front_or_rear(
    p: _Painter, body: str, paint: Colour, rear: bool, emblem: Callable[[float, float], None]
) -> None:
    roof, belt, inset, wheel_h, _ = _FRONT[body]
    # Wheels peek out below the body at both corners.
    for u in (0.1, 0.76):
        p.rect(u, 0.86 - wheel_h, u + 0.14, 1.0, _TYRE, radius=0.03)
    p.rect(0.01, belt - 0.02, 0.99, 0.9, paint, radius=0.06)
    p.polygon(
        [(0.04 + inset * 0.4, belt), (inset, roof), (1 - inset, roof), (0.96 - inset * 0.4, belt)],
        paint,
    )
    glass_top = roof + 0.04 if body != "bus" else roof + 0.06
    glass_bottom = belt - 0.03
    glass = [
        (0.07 + inset * 0.45, glass_bottom),
        (inset + 0.04, glass_top),
        (0.96 - inset, glass_top),
        (0.93 - inset * 0.45, glass_bottom),
    ]
    if rear and body != "bus":
        # A smaller rear window.
        glass = [(u, v + (glass_bottom - v) * 0.25 if v == glass_top else v) for u, v in glass]
    p.polygon(glass, _GLASS)
    if body == "bus":
        p.rect(0.2, roof + 0.005, 0.8, roof + 0.05, (40, 40, 40))
        p.rect(0.24, roof + 0.012, 0.62, roof + 0.043, (250, 170, 30))
    lamp_v = belt + (0.9 - belt) * 0.3
    lamp = (255, 245, 200) if not rear else (210, 25, 25)
    for u in (0.1, 0.9):
        if rear:
            p.rect(u - 0.07, lamp_v - 0.05, u + 0.07, lamp_v + 0.05, lamp, radius=0.02)
        else:
            p.ellipse(u, lamp_v, 0.07, 0.055, lamp)
    if rear:
        p.rect(0.38, 0.72, 0.62, 0.82, (235, 235, 225), radius=0.01)
        emblem(0.5, belt + (0.72 - belt) * 0.45)
    else:
        grille_top = belt + (0.9 - belt) * 0.15
        p.rect(0.3, grille_top, 0.7, 0.8, (45, 45, 50), radius=0.03)
        emblem(0.5, (grille_top + 0.8) / 2)
    p.rect(0.03, 0.83, 0.97, 0.9, (60, 60, 64), radius=0.02)


def _draw_side(
    p: _Painter, body: str, paint: Colour, emblem: Callable[[float, float], None]
) -> None:
    """A vehicle facing right (u = 1 is its front); the painter mirrors it for ``left``."""
    wheel_r = 0.16 if body != "bus" else 0.13
    if body == "bus":
        p.rect(0.0, 0.04, 1.0, 0.86, paint, radius=0.05)
        for k in range(5):
            u0 = 0.05 + k * 0.17
            p.rect(u0, 0.14, u0 + 0.14, 0.44, _GLASS, radius=0.02)
        p.rect(0.9, 0.14, 0.985, 0.6, _GLASS, radius=0.02)
        p.rect(0.015, 0.5, 0.03, 0.62, (210, 25, 25))
        p.rect(0.975, 0.66, 0.995, 0.74, (255, 245, 200))
        emblem(0.5, 0.64)
        wheels = (0.17, 0.8)
    else:
        belt = {"sedan": 0.45, "suv": 0.4, "truck": 0.42}[body]
        bottom = 0.8
        p.rect(0.0, belt, 1.0, bottom, paint, radius=0.08)
        if body == "sedan":
            cabin = [(0.18, belt), (0.32, 0.1), (0.62, 0.1), (0.8, belt)]
        elif body == "suv":
            cabin = [(0.04, belt), (0.07, 0.04), (0.66, 0.04), (0.8, belt)]
        else:
            cabin = [(0.5, belt), (0.52, 0.03), (0.72, 0.03), (0.82, belt)]
            p.rect(0.02, belt - 0.12, 0.48, belt, _darker(paint), radius=0.01)
        p.polygon(cabin, paint)
        (a, _), (b, top), (c, _), (d, _) = cabin
        pillar = (b + c) / 2
        p.polygon(
            [
                (a + 0.04, belt - 0.03),
                (b + 0.03, top + 0.04),
                (pillar - 0.015, top + 0.04),
                (pillar - 0.015, belt - 0.03),
            ],
            _GLASS,
        )
        p.polygon(
            [
                (pillar + 0.015, belt - 0.03),
                (pillar + 0.015, top + 0.04),
                (c - 0.01, top + 0.04),
                (d - 0.05, belt - 0.03),
            ],
            _GLASS,
        )
        p.rect(0.0, belt + 0.04, 0.03, belt + 0.14, (210, 25, 25), radius=0.01)
        p.ellipse(0.975, belt + 0.09, 0.025, 0.05, (255, 245, 200))
        emblem(0.89, belt + (bottom - belt) * 0.45)
        wheels = (0.2, 0.8)
    for u in wheels:
        p.wheel(u, 0.82, wheel_r)


def _darker(colour: Colour) -> Colour:
    r, g, b = (int(c * 0.6) for c in colour)
    return (r, g, b)


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

    def render(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB Pillow image of ``size``."""
        return self._render(index, mask=False)

    def vehicle_mask(self, index: int) -> Tensor:
        """(H, W) bool: the pixels the vehicle covers in image ``index``."""
        return pil_to_tensor(self._render(index, mask=True))[0] > 127

    def depth_map(self, index: int) -> Tensor:
        """(1, H, W) depth in metres of image ``index``, 0 on the sky (:func:`synthetic_depth`)."""
        return synthetic_depth(self, index)

    def _render(self, index: int, *, mask: bool, parts: bool = False) -> Image.Image:
        pil = require_pillow()
        vehicle = self.vehicle(index)
        rng = self._rng(index, "scene")
        height, width = self.size
        big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
        sky = _jitter(rng.choice(_SKIES), rng, 12)
        ground = _jitter(rng.choice(_GROUNDS), rng, 10)
        horizon = big_h * rng.uniform(0.55, 0.72)
        if mask or parts:
            canvas = pil.Image.new("L", (big_w, big_h), 0)
        else:
            canvas = pil.Image.new("RGB", (big_w, big_h), sky)
        draw = pil.ImageDraw.Draw(canvas)
        if not (mask or parts):
            draw.rectangle((0, horizon, big_w, big_h), fill=ground)
            for _ in range(rng.randint(0, 3)):
                # Background buildings: muted blocks behind the vehicle.
                bw, bh = rng.uniform(0.08, 0.3) * big_w, rng.uniform(0.15, 0.45) * big_h
                bx = rng.uniform(-0.1, 1.0) * big_w
                shade = _jitter(rng.choice(_SKIES), rng, 30)
                draw.rectangle((bx, horizon - bh, bx + bw, horizon), fill=_darker(shade))

        side = vehicle.orientation in ("left", "right")
        aspect = _SIDE_ASPECT[vehicle.body] if side else _FRONT[vehicle.body][4]
        scale = rng.uniform(0.78, 0.92)
        box_h = min(big_h * scale, big_w * scale / aspect)
        box_w = box_h * aspect
        left = (big_w - box_w) / 2 + rng.uniform(-0.5, 0.5) * (big_w - box_w) * 0.6
        bottom = big_h - (big_h - box_h) * rng.uniform(0.15, 0.45)
        painter = _Painter(
            draw,
            (left, bottom - box_h, box_w, box_h),
            mirror=vehicle.orientation == "left",
            mask=mask,
            parts=parts,
        )
        paint = _jitter(COLOURS[vehicle.colour], rng, 14)
        shape = BRANDS[vehicle.brand]
        emblem_px = self.emblem_size * big_h * rng.uniform(0.9, 1.1)

        def emblem(u: float, v: float) -> None:
            painter.emblem(u, v, emblem_px, shape)

        if side:
            _draw_side(painter, vehicle.body, paint, emblem)
        else:
            _draw_front_or_rear(painter, vehicle.body, paint, vehicle.orientation == "rear", emblem)
        if parts:
            # Part indices must not be averaged: take one drawn pixel per output pixel.
            return canvas.resize((width, height), pil.Image.Resampling.NEAREST)
        return canvas.reduce(_SUPERSAMPLE)

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

        return _write_tree(Path(root), fill)

    def write_manifest(
        self,
        root: str | os.PathLike[str],
        *,
        manifest_format: Literal["csv", "json"] = "csv",
        image_format: str = "png",
    ) -> Path:
        """Write the images to ``root/images/`` and a manifest of all four labels beside them.

        Blanked labels are empty cells (CSV) or ``null`` (JSON); image paths are relative to
        the manifest, so :class:`~dinov2_heads.data.ManifestDataset` reads it back as is. The
        folder appears complete or not at all.

        Returns:
            The manifest path, ``root/manifest.csv`` or ``root/manifest.json``.
        """
        if manifest_format not in ("csv", "json"):
            raise ValueError(f"manifest_format must be 'csv' or 'json', got {manifest_format!r}")
        filename = f"manifest.{manifest_format}"

        def fill(staging: Path) -> None:
            (staging / "images").mkdir()
            rows: list[dict[str, Any]] = []
            for index in range(self.num_images):
                relative = f"images/{index:06d}.{image_format}"
                self.render(index).save(staging / relative)
                row: dict[str, Any] = {"path": relative}
                for name, value in self.labels(index).items():
                    row[name] = None if value == MISSING_LABEL else self.vocabularies[name][value]
                rows.append(row)
            (staging / filename).write_bytes(_manifest_bytes(rows, manifest_format))

        return _write_tree(Path(root), fill) / filename

    # ------------------------------------------------------------------ part masks

    def part_mask(self, index: int) -> Tensor:
        """(H, W) int64 part of each pixel of image ``index``: an index into :data:`PARTS`.

        0 background, 1 body (paint, lamps, grille, plates), 2 windows, 3 wheels, 4 emblem;
        drawn with the same shapes as the image, so parts line up with its pixels.
        """
        mask = self._render(index, mask=False, parts=True)
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
                mask = self._render(index, mask=False, parts=True)
                paletted = pil.Image.frombytes("P", mask.size, mask.tobytes())
                paletted.putpalette(palette)
                paletted.save(staging / "masks" / f"{index:06d}.png")

        return _write_tree(Path(root), fill)


#: The parts of :meth:`SyntheticVehicles.part_mask`, in index order.
PARTS: tuple[str, ...] = ("background", "body", "windows", "wheels", "emblem")
#: A colour per part for pictures and palette PNGs.
PART_PALETTE: tuple[Colour, ...] = (
    (0, 0, 0),
    (220, 60, 60),
    (70, 140, 230),
    (250, 200, 40),
    (60, 210, 120),
)
#: (image, mask) -> (image (3, H, W), mask (H, W)), as ``SegmentationTransform``.
JointTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _part_of(colour: Colour) -> int:
    """The part index of a fill. The parts are known by the constants they are drawn with:
    compared by identity, since a jittered paint colour may equal one of them in value."""
    if colour is _GLASS:
        return 2
    if colour is _TYRE or colour is _HUB:
        return 3
    if colour is _PLATE or colour is _CHROME:
        return 4
    return 1


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


def _write_tree(root: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder in a hidden sibling, then rename it to ``root`` in one step."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} already exists and is not an empty folder; choose a new path"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        fill(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
        if root.exists():
            root.rmdir()
        staging.chmod(0o755)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s", root)
    return root


# ---------------------------------------------------------------------------- depth

#: Real heights (metres) of the body types, which set the scene's scale.
VEHICLE_HEIGHTS: dict[str, float] = {"bus": 3.2, "sedan": 1.45, "suv": 1.8, "truck": 2.0}
#: The camera's focal length in units of the image height (a vertical field of view of 53°).
FOCAL = 1.0
#: The farthest depth of the ground plane, and the distance of the background buildings.
FAR_DEPTH = 20.0
BUILDING_DEPTH = 15.0


@dataclass(frozen=True)
class SceneLayout:
    """Where image ``i``'s horizon, buildings and vehicle box are, in output pixels.

    Attributes:
        horizon: Row of the horizon (the top of the ground plane).
        buildings: (left, top, right, bottom) of each background building.
        box: (left, top, width, height) of the vehicle's drawing box; its bottom edge is
            where the wheels meet the ground.
    """

    horizon: float
    buildings: tuple[tuple[float, float, float, float], ...]
    box: tuple[float, float, float, float]


def scene_layout(dataset: SyntheticVehicles, index: int) -> SceneLayout:
    """The layout :meth:`SyntheticVehicles.render` draws image ``index`` with.

    It takes the same random draws in the same order as the rendering, so the horizon and
    the vehicle box are those of the picture.
    """
    vehicle = dataset.vehicle(index)
    rng = dataset._rng(index, "scene")
    height, width = dataset.size
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    _jitter(rng.choice(_SKIES), rng, 12)
    _jitter(rng.choice(_GROUNDS), rng, 10)
    horizon = big_h * rng.uniform(0.55, 0.72)
    buildings = []
    for _ in range(rng.randint(0, 3)):
        bw, bh = rng.uniform(0.08, 0.3) * big_w, rng.uniform(0.15, 0.45) * big_h
        bx = rng.uniform(-0.1, 1.0) * big_w
        _jitter(rng.choice(_SKIES), rng, 30)
        buildings.append((bx, horizon - bh, bx + bw, horizon))
    side = vehicle.orientation in ("left", "right")
    aspect = _SIDE_ASPECT[vehicle.body] if side else _FRONT[vehicle.body][4]
    scale = rng.uniform(0.78, 0.92)
    box_h = min(big_h * scale, big_w * scale / aspect)
    box_w = box_h * aspect
    left = (big_w - box_w) / 2 + rng.uniform(-0.5, 0.5) * (big_w - box_w) * 0.6
    bottom = big_h - (big_h - box_h) * rng.uniform(0.15, 0.45)
    s = 1 / _SUPERSAMPLE
    return SceneLayout(
        horizon=horizon * s,
        buildings=tuple((a * s, b * s, c * s, d * s) for a, b, c, d in buildings),
        box=(left * s, (bottom - box_h) * s, box_w * s, box_h * s),
    )


def _silhouette(dataset: SyntheticVehicles, index: int, layout: SceneLayout) -> Tensor:
    """(H, W) float: the fraction of each pixel the vehicle covers, drawn with ``layout``."""
    pil = require_pillow()
    vehicle = dataset.vehicle(index)
    height, width = dataset.size
    canvas = pil.Image.new("L", (width * _SUPERSAMPLE, height * _SUPERSAMPLE), 0)
    left, top, box_w, box_h = (v * _SUPERSAMPLE for v in layout.box)
    painter = _Painter(
        pil.ImageDraw.Draw(canvas),
        (left, top, box_w, box_h),
        mirror=vehicle.orientation == "left",
        mask=True,
    )
    colour = COLOURS[vehicle.colour]
    if vehicle.orientation in ("left", "right"):
        _draw_side(painter, vehicle.body, colour, lambda u, v: None)
    else:
        rear = vehicle.orientation == "rear"
        _draw_front_or_rear(painter, vehicle.body, colour, rear, lambda u, v: None)
    return pil_to_tensor(canvas.reduce(_SUPERSAMPLE))[0].float() / 255


def synthetic_depth(dataset: SyntheticVehicles, index: int) -> Tensor:
    """(1, H, W) float32 depth in metres of image ``index``; 0 (no depth) on the sky.

    A pinhole camera with focal length ``FOCAL`` x H looks level at a flat ground: a
    ground pixel r rows below the horizon is ``f * camera_height / r`` metres away (at most
    ``FAR_DEPTH``). The vehicle stands on the ground at the bottom of its box; its real
    height (:data:`VEHICLE_HEIGHTS`) fixes its distance ``f * height / box_height`` and, with
    where the box meets the ground, the camera height. Its surface faces the camera, the
    upper part set back (a windscreen sloping away, by up to 0.5 m) and, seen from the side,
    the ends rounded (up to 0.3 m). Background buildings are flat walls at
    ``BUILDING_DEPTH``.
    """
    layout = scene_layout(dataset, index)
    vehicle = dataset.vehicle(index)
    height, width = dataset.size
    focal = FOCAL * height
    left, top, box_w, box_h = layout.box
    bottom = top + box_h
    vehicle_distance = focal * VEHICLE_HEIGHTS[vehicle.body] / box_h
    camera_height = vehicle_distance * (bottom - layout.horizon) / focal

    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    below = (rows - layout.horizon).clamp(min=1e-6)
    ground = (focal * camera_height / below).clamp(max=FAR_DEPTH)
    depth = torch.where(rows > layout.horizon, ground, torch.zeros(()))
    depth = depth.expand(height, width).clone()
    for b_left, b_top, b_right, b_bottom in layout.buildings:
        inside = (cols >= b_left) & (cols < b_right) & (rows >= b_top) & (rows < b_bottom)
        depth[inside] = BUILDING_DEPTH

    u = ((cols - left) / box_w).clamp(0, 1)
    v = ((rows - top) / box_h).clamp(0, 1)
    if vehicle.orientation in ("left", "right"):
        surface = vehicle_distance + 0.3 * (2 * u - 1) ** 2  # (1, W): rounded ends
    else:
        surface = vehicle_distance + 0.5 * (1 - v / 0.5).clamp(min=0)  # (H, 1): cabin set back
    covered = _silhouette(dataset, index, layout) >= 0.5
    depth[covered] = surface.expand(height, width)[covered]
    return depth[None]


class SyntheticDepthPairs(Dataset[tuple[Tensor, Tensor]]):
    """``SyntheticVehicles`` images with depth: items ``(image (3, H, W), depth (1, H, W))``.

    The image is normalised as :class:`SyntheticVehicles` returns it (or as ``transform``
    makes it from the ``uint8`` image); depth is in metres with 0 on the sky.

    Args:
        vehicles: The image set; its ``size`` is kept (sizes that are not multiples of 14
            work with a :class:`~dinov2_heads.dense.Depther`, which pads).
        transform: (image ``uint8`` (3, H, W), depth (1, H, W)) -> the pair, such as
            :class:`~dinov2_heads.data.DepthTransform`; ``None`` normalises the image only.
        fog: Draw the scenes in fog that dims colours to 1/e over this many metres
            (:func:`~dinov2_heads.demo.fog.add_fog`; the sky takes the fog's colour), so the
            distance shows in the colours; ``None``: clear air, the images as rendered.
    """

    def __init__(
        self,
        vehicles: SyntheticVehicles,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        *,
        fog: float | None = None,
    ) -> None:
        from dinov2_heads.data.depth_transforms import DepthTransform

        self.vehicles = vehicles
        self.transform = transform if transform is not None else DepthTransform.evaluation()
        self.fog = fog

    def __len__(self) -> int:
        return len(self.vehicles)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if -len(self) <= index < 0:
            index += len(self)
        return self.transform(*self.raw(index))

    def raw(self, index: int) -> tuple[Tensor, Tensor]:
        """Pair ``index`` before the transform: ``uint8`` image (3, H, W), depth (1, H, W)."""
        image = self.vehicles.image_tensor(index)
        depth = synthetic_depth(self.vehicles, index)
        if self.fog is not None:
            from dinov2_heads.demo.fog import add_fog

            image = add_fog(image, depth, distance=self.fog)
        return image, depth

    def batches(self, batch_size: int = 16) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole set in order, as (B, 3, H, W) images and (B, 1, H, W) depths."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            items = [self[i] for i in range(start, min(start + batch_size, len(self)))]
            yield torch.stack([i for i, _ in items]), torch.stack([d for _, d in items])

    def write_folders(self, root: str | os.PathLike[str], *, scale: float | str = "kitti") -> Path:
        """Write ``root/images/<index>.png`` and ``root/depth/<index>.png`` (16-bit, ``scale``).

        :meth:`DepthDataset.from_folders <dinov2_heads.data.DepthDataset.from_folders>` reads
        them back with the same ``scale``. The folder appears complete or not at all.

        Returns:
            ``root``.
        """
        from dinov2_heads.data.depth_io import write_depth_png

        def fill(staging: Path) -> None:
            (staging / "images").mkdir()
            (staging / "depth").mkdir()
            for index in range(len(self)):
                image, depth = self.raw(index)
                tensor_to_pil(image).save(staging / "images" / f"{index:06d}.png")
                write_depth_png(staging / "depth" / f"{index:06d}.png", depth, scale=scale)

        return _write_tree(Path(root), fill)
