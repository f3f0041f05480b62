"""One synthetic street picture: its random layout (:class:`Scene`) and its drawing.

Everything random about a picture is drawn once, by :func:`plan_scene`; the picture, the
vehicle's silhouette and its part mask are then all drawn from that one :class:`Scene`
(:func:`draw_scene`), so they line up pixel for pixel, and the depth map
(:mod:`dinov2_heads.demo.street_depth`) follows the same horizon and vehicle box.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dinov2_heads.data.loading import require_pillow
from dinov2_heads.demo.drawing import SUPERSAMPLE, Colour, Painter, body_aspect, darker, draw_body

if TYPE_CHECKING:
    from PIL import Image

_SKIES = ((150, 175, 200), (185, 195, 205), (120, 140, 160), (205, 190, 165), (160, 160, 150))
_GROUNDS = ((90, 90, 92), (110, 105, 100), (70, 72, 75), (125, 125, 120))

#: What :func:`draw_scene` draws: the RGB picture, the vehicle's silhouette (``L``, 0 or 255
#: before anti-aliasing) or its part mask (``L``, part indices, no anti-aliasing).
DrawMode = Literal["picture", "silhouette", "parts"]


@dataclass(frozen=True)
class Scene:
    """Where everything in one picture is and what colour it has, in output pixels.

    Attributes:
        size: The picture's (H, W).
        horizon: Row of the horizon (the top of the ground plane).
        buildings: (left, top, right, bottom) of each background building.
        box: (left, top, width, height) of the vehicle's drawing box; its bottom edge is
            where the wheels meet the ground.
        sky: The sky's colour.
        ground: The ground's colour.
        building_colours: One colour per building.
        body: The vehicle's body type.
        orientation: Which side of the vehicle faces the camera.
        paint: The vehicle's paint colour.
        emblem: The emblem's shape (see :func:`~dinov2_heads.demo.drawing.Painter.emblem`).
        emblem_size: The emblem's diameter in pixels.
    """

    size: tuple[int, int]
    horizon: float
    buildings: tuple[tuple[float, float, float, float], ...]
    box: tuple[float, float, float, float]
    sky: Colour
    ground: Colour
    building_colours: tuple[Colour, ...]
    body: str
    orientation: str
    paint: Colour
    emblem: str
    emblem_size: float


def jitter(colour: Colour, rng: random.Random, amount: int) -> Colour:
    """``colour`` with each channel moved by up to ``amount`` levels, kept in 0-255."""
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)
    return (r, g, b)


def plan_scene(
    rng: random.Random,
    *,
    size: tuple[int, int],
    body: str,
    orientation: str,
    paint: Colour,
    emblem: str,
    emblem_size: float,
) -> Scene:
    """Draw everything random about one picture from ``rng``, in a fixed order.

    Args:
        rng: The picture's own random stream.
        size: The picture's (H, W).
        body: The body type (its silhouette and box shape).
        orientation: ``front``, ``rear``, ``left`` or ``right``.
        paint: The base paint colour; the scene's shade varies a little around it.
        emblem: The emblem's shape.
        emblem_size: The emblem's diameter as a fraction of the picture's height.
    """
    height, width = size
    # Placed in drawing pixels; halving them for output pixels is exact in floating point,
    # so the drawing (which doubles them again) is the same whichever unit is kept.
    big_h, big_w = height * SUPERSAMPLE, width * SUPERSAMPLE
    sky = jitter(rng.choice(_SKIES), rng, 12)
    ground = jitter(rng.choice(_GROUNDS), rng, 10)
    horizon = big_h * rng.uniform(0.55, 0.72)
    buildings = []
    building_colours = []
    for _ in range(rng.randint(0, 3)):
        bw, bh = rng.uniform(0.08, 0.3) * big_w, rng.uniform(0.15, 0.45) * big_h
        bx = rng.uniform(-0.1, 1.0) * big_w
        buildings.append((bx, horizon - bh, bx + bw, horizon))
        building_colours.append(darker(jitter(rng.choice(_SKIES), rng, 30)))
    aspect = body_aspect(body, side=orientation in ("left", "right"))
    scale = rng.uniform(0.78, 0.92)
    box_h = min(big_h * scale, big_w * scale / aspect)
    box_w = box_h * aspect
    left = (big_w - box_w) / 2 + rng.uniform(-0.5, 0.5) * (big_w - box_w) * 0.6
    bottom = big_h - (big_h - box_h) * rng.uniform(0.15, 0.45)
    shade = jitter(paint, rng, 14)
    emblem_px = emblem_size * big_h * rng.uniform(0.9, 1.1)
    s = 1 / SUPERSAMPLE
    return Scene(
        size=size,
        horizon=horizon * s,
        buildings=tuple((a * s, b * s, c * s, d * s) for a, b, c, d in buildings),
        box=(left * s, (bottom - box_h) * s, box_w * s, box_h * s),
        sky=sky,
        ground=ground,
        building_colours=tuple(building_colours),
        body=body,
        orientation=orientation,
        paint=shade,
        emblem=emblem,
        emblem_size=emblem_px * s,
    )


def draw_scene(scene: Scene, mode: DrawMode = "picture") -> Image.Image:
    """Draw ``scene`` at its size: the RGB picture, the silhouette or the part mask.

    The silhouette and the part mask are the vehicle alone (background 0), drawn with the same
    shapes at the same place as the picture.
    """
    pil = require_pillow()
    height, width = scene.size
    big = SUPERSAMPLE
    if mode == "picture":
        canvas = pil.Image.new("RGB", (width * big, height * big), scene.sky)
    else:
        canvas = pil.Image.new("L", (width * big, height * big), 0)
    draw = pil.ImageDraw.Draw(canvas)
    if mode == "picture":
        draw.rectangle((0, scene.horizon * big, width * big, height * big), fill=scene.ground)
        for (x0, y0, x1, y1), colour in zip(scene.buildings, scene.building_colours, strict=True):
            draw.rectangle((x0 * big, y0 * big, x1 * big, y1 * big), fill=colour)
    left, top, box_w, box_h = (v * big for v in scene.box)
    painter = Painter(
        draw,
        (left, top, box_w, box_h),
        mirror=scene.orientation == "left",
        mask=mode == "silhouette",
        parts=mode == "parts",
    )

    def emblem(u: float, v: float) -> None:
        painter.emblem(u, v, scene.emblem_size * big, scene.emblem)

    draw_body(painter, scene.body, scene.orientation, scene.paint, emblem)
    if mode == "parts":
        # Part indices must not be averaged: take one drawn pixel per output pixel.
        return canvas.resize((width, height), pil.Image.Resampling.NEAREST)
    return canvas.reduce(big)
