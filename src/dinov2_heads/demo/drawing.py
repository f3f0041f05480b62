"""Drawing a synthetic vehicle with Pillow: a painter in the vehicle's own box, emblems, bodies.

The same calls draw the picture, the vehicle's silhouette (every vehicle colour painted white)
and its part mask (every fill painted with its part index, :data:`PARTS`), so the three line up
pixel for pixel when they are drawn from the same :class:`~dinov2_heads.demo.scene.Scene`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageDraw

#: Pictures are drawn this many times larger and reduced: anti-aliased edges.
SUPERSAMPLE = 2
_PLATE = (30, 32, 36)
_CHROME = (228, 230, 236)
_GLASS = (42, 52, 68)
_TYRE = (18, 18, 18)
_HUB = (120, 120, 125)

Colour = tuple[int, int, int]
Point = tuple[float, float]


class Painter:
    """Draws in a vehicle's own box: u (0 = left, 1 = right) and v (0 = top, 1 = bottom).

    ``mirror`` flips u, so every side view is drawn facing right and mirrored for ``left``.
    In mask mode every vehicle colour is painted white, which gives the vehicle's silhouette;
    in parts mode each fill is painted with its part index (see :func:`part_of`).
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
            return part_of(colour)
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


def body_aspect(body: str, side: bool) -> float:
    """The width / height of a body type's drawing box, seen from the side or from the end."""
    return _SIDE_ASPECT[body] if side else _FRONT[body][4]


def draw_body(
    painter: Painter,
    body: str,
    orientation: str,
    paint: Colour,
    emblem: Callable[[float, float], None],
) -> None:
    """Draw a ``body`` type facing ``orientation`` in the painter's box; ``emblem(u, v)`` places
    the badge."""
    if orientation in ("left", "right"):
        _draw_side(painter, body, paint, emblem)
    else:
        _draw_front_or_rear(painter, body, paint, orientation == "rear", emblem)


def _draw_front_or_rear(
    p: Painter, body: str, paint: Colour, rear: bool, emblem: Callable[[float, float], None]
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
    p: Painter, body: str, paint: Colour, emblem: Callable[[float, float], None]
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
            p.rect(0.02, belt - 0.12, 0.48, belt, darker(paint), radius=0.01)
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


def darker(colour: Colour) -> Colour:
    r, g, b = (int(c * 0.6) for c in colour)
    return (r, g, b)


#: The parts of a part mask, in index order (see :func:`part_of`).
PARTS: tuple[str, ...] = ("background", "body", "windows", "wheels", "emblem")
#: A colour per part for pictures and palette PNGs.
PART_PALETTE: tuple[Colour, ...] = (
    (0, 0, 0),
    (220, 60, 60),
    (70, 140, 230),
    (250, 200, 40),
    (60, 210, 120),
)


def part_of(colour: Colour) -> int:
    """The part index of a fill. The parts are known by the constants they are drawn with:
    compared by identity, since a jittered paint colour may equal one of them in value."""
    if colour is _GLASS:
        return 2
    if colour is _TYRE or colour is _HUB:
        return 3
    if colour is _PLATE or colour is _CHROME:
        return 4
    return 1
