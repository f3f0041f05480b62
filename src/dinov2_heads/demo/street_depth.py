"""The depth in metres of a synthetic street :class:`~dinov2_heads.demo.scene.Scene`.

A pinhole camera looks level at a flat ground; the vehicle stands on it, and its real height
sets the scene's scale. See :func:`scene_depth`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dinov2_heads.demo.scene import Scene

#: Real heights (metres) of the body types, which set the scene's scale.
VEHICLE_HEIGHTS: dict[str, float] = {"bus": 3.2, "sedan": 1.45, "suv": 1.8, "truck": 2.0}
#: The camera's focal length in units of the image height (a vertical field of view of 53°).
FOCAL = 1.0
#: The farthest depth of the ground plane, and the distance of the background buildings.
FAR_DEPTH = 20.0
BUILDING_DEPTH = 15.0


def scene_depth(scene: Scene, covered: Tensor) -> Tensor:
    """(1, H, W) float32 depth in metres of ``scene``; 0 (no depth) on the sky.

    A pinhole camera with focal length ``FOCAL`` x H looks level at a flat ground: a
    ground pixel r rows below the horizon is ``f * camera_height / r`` metres away (at most
    ``FAR_DEPTH``). The vehicle stands on the ground at the bottom of its box; its real
    height (:data:`VEHICLE_HEIGHTS`) fixes its distance ``f * height / box_height`` and, with
    where the box meets the ground, the camera height. Its surface faces the camera, the
    upper part set back (a windscreen sloping away, by up to 0.5 m) and, seen from the side,
    the ends rounded (up to 0.3 m). Background buildings are flat walls at
    ``BUILDING_DEPTH``.

    Args:
        scene: The picture's layout.
        covered: (H, W) bool, the pixels the vehicle covers (its silhouette).
    """
    height, width = scene.size
    focal = FOCAL * height
    left, top, box_w, box_h = scene.box
    bottom = top + box_h
    vehicle_distance = focal * VEHICLE_HEIGHTS[scene.body] / box_h
    camera_height = vehicle_distance * (bottom - scene.horizon) / focal

    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    below = (rows - scene.horizon).clamp(min=1e-6)
    ground = (focal * camera_height / below).clamp(max=FAR_DEPTH)
    depth = torch.where(rows > scene.horizon, ground, torch.zeros(()))
    depth = depth.expand(height, width).clone()
    for b_left, b_top, b_right, b_bottom in scene.buildings:
        inside = (cols >= b_left) & (cols < b_right) & (rows >= b_top) & (rows < b_bottom)
        depth[inside] = BUILDING_DEPTH

    u = ((cols - left) / box_w).clamp(0, 1)
    v = ((rows - top) / box_h).clamp(0, 1)
    if scene.orientation in ("left", "right"):
        surface = vehicle_distance + 0.3 * (2 * u - 1) ** 2  # (1, W): rounded ends
    else:
        surface = vehicle_distance + 0.5 * (1 - v / 0.5).clamp(min=0)  # (H, 1): cabin set back
    depth[covered] = surface.expand(height, width)[covered]
    return depth[None]
