"""``DepthDataset``: image and depth-map pairs from two folders, a manifest or a list."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.depth_io import NUMPY_SUFFIXES, depth_scale, read_depth
from dinov2_heads.data.depth_transforms import DepthTransform, check_pair
from dinov2_heads.data.folder import IMAGE_EXTENSIONS
from dinov2_heads.data.functional import pil_to_tensor
from dinov2_heads.data.loading import PAIR_ADVICE, UnreadableImageError, load_image
from dinov2_heads.data.manifest import read_manifest

PathLike = str | os.PathLike[str]
#: (image (3, H, W), depth (1, H, W)) -> the same, transformed.
PairTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

_DEPTH_SUFFIXES = (".png", *NUMPY_SUFFIXES, ".tif", ".tiff")
_SHOWN = 5


class DepthDataset(Dataset[tuple[Tensor, Tensor]]):
    """Pairs of an image and its depth map; items are ``(image (3, H, W), depth (1, H, W))``.

    Depth is in metres, 0 where there is no measurement (see
    :func:`~dinov2_heads.data.read_depth`); a depth map whose size differs from its image's is
    refused when its item is loaded, naming both files. An image that cannot be read raises
    :class:`~dinov2_heads.data.UnreadableImageError`, a depth map
    :class:`~dinov2_heads.data.UnreadableDepthError`, each naming the file and advising a fix
    that fits a dataset (there is no option to skip a pair).

    Args:
        pairs: (image path, depth path) pairs.
        scale: Pixel values per metre of integer depth images: ``"nyu"`` (1000),
            ``"kitti"`` (256) or a number; ``None`` for ``.npy`` arrays in metres.
        transform: (image ``uint8`` (3, H, W), depth (1, H, W)) -> the pair to return;
            default :meth:`DepthTransform.evaluation` (the image normalised).
            ``DepthTransform.evaluation(normalize=False)`` yields the ``uint8`` image instead,
            for a ``FrozenBackbone`` or ``Depther`` to normalise on its device.

    Example:
        >>> dataset = DepthDataset.from_folders("nyu/images", "nyu/depth", scale="nyu")
        ... # doctest: +SKIP
    """

    #: It reads image files: ``extract_features(num_workers="auto")`` reads it with worker
    #: processes.
    reads_image_files: ClassVar[bool] = True

    def __init__(
        self,
        pairs: Sequence[tuple[PathLike, PathLike]],
        *,
        scale: float | str | None = None,
        transform: PairTransform | None = None,
    ) -> None:
        self.pairs: list[tuple[Path, Path]] = [(Path(i), Path(d)) for i, d in pairs]
        self.scale = depth_scale(scale)
        self.transform: PairTransform = (
            transform if transform is not None else DepthTransform.evaluation()
        )

    @classmethod
    def from_folders(
        cls,
        images: PathLike,
        depths: PathLike,
        *,
        scale: float | str | None = None,
        transform: PairTransform | None = None,
    ) -> DepthDataset:
        """Pairs matched by their path below each folder without the ending.

        ``images/scene1/0001.jpg`` pairs with ``depths/scene1/0001.png`` (or ``.npy``).
        Hidden files are ignored.

        Raises:
            ValueError: An image without a depth map (or the reverse), or no pair at all; the
                message lists the first unmatched files.
        """
        image_files = _files(Path(images), IMAGE_EXTENSIONS, "images")
        depth_files = _files(Path(depths), _DEPTH_SUFFIXES, "depth maps")
        alone = sorted(set(image_files) - set(depth_files))
        if alone:
            shown = ", ".join(str(image_files[key]) for key in alone[:_SHOWN])
            raise ValueError(
                f"{len(alone)} image(s) have no depth map in {depths} with the same name: "
                f"{shown}; add the depth maps or remove the images"
            )
        orphans = sorted(set(depth_files) - set(image_files))
        if orphans:
            shown = ", ".join(str(depth_files[key]) for key in orphans[:_SHOWN])
            raise ValueError(
                f"{len(orphans)} depth map(s) have no image in {images} with the same name: {shown}"
            )
        if not image_files:
            raise ValueError(f"no images found in {images}")
        keys = sorted(image_files)
        return cls(
            [(image_files[k], depth_files[k]) for k in keys], scale=scale, transform=transform
        )

    @classmethod
    def from_manifest(
        cls,
        manifest: PathLike,
        *,
        image_column: str = "image",
        depth_column: str = "depth",
        scale: float | str | None = None,
        transform: PairTransform | None = None,
    ) -> DepthDataset:
        """Pairs from a CSV / JSON / JSON Lines manifest; relative paths start at its folder."""
        file = Path(manifest)
        rows = read_manifest(file)
        pairs = []
        for number, row in enumerate(rows, 1):
            image, depth = row.get(image_column), row.get(depth_column)
            if image is None or depth is None:
                raise ValueError(
                    f"{file}, row {number}: needs both an {image_column!r} and a "
                    f"{depth_column!r} path, got {row!r}"
                )
            pairs.append((file.parent / image, file.parent / depth))
        if not pairs:
            raise ValueError(f"manifest {file} lists no pairs")
        return cls(pairs, scale=scale, transform=transform)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """The pair as read: image ``uint8`` (3, H, W) and depth (1, H, W) metres."""
        image_path, depth_path = self.pairs[index]
        try:
            image = pil_to_tensor(load_image(image_path))
        except UnreadableImageError as error:
            # The dataset has no option to skip a pair; a depth map that cannot be read says
            # its own fix (UnreadableDepthError).
            raise UnreadableImageError(error.path, error.reason, PAIR_ADVICE) from error
        depth = read_depth(depth_path, scale=self.scale)
        check_pair(image, depth, f"pair {image_path} / {depth_path}")
        return image, depth

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """The transformed image (3, H, W) and depth (1, H, W)."""
        return self.transform(*self.load(index))


def _files(root: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"the folder of {what} {root} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        key = relative.with_suffix("").as_posix()
        if key in found:
            raise ValueError(
                f"two {what} share the name {key}: {found[key]} and {path}; keep one of them"
            )
        found[key] = path
    return found
