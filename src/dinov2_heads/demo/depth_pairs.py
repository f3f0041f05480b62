"""Synthetic street scenes with their depth maps: a depth data set that needs no files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.depth_io import write_depth_png
from dinov2_heads.data.depth_transforms import DepthTransform
from dinov2_heads.data.functional import tensor_to_pil
from dinov2_heads.demo.fog import add_fog
from dinov2_heads.demo.folders import write_tree
from dinov2_heads.demo.synthetic import SyntheticVehicles


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
        depth = self.vehicles.depth_map(index)
        if self.fog is not None:
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

        def fill(staging: Path) -> None:
            (staging / "images").mkdir()
            (staging / "depth").mkdir()
            for index in range(len(self)):
                image, depth = self.raw(index)
                tensor_to_pil(image).save(staging / "images" / f"{index:06d}.png")
                write_depth_png(staging / "depth" / f"{index:06d}.png", depth, scale=scale)

        return write_tree(Path(root), fill)
