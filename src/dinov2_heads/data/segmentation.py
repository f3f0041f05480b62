"""``SegmentationDataset``: image and mask pairs from two folders or a manifest."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.folder import IMAGE_EXTENSIONS
from dinov2_heads.data.functional import pil_to_tensor
from dinov2_heads.data.joint_transforms import SegmentationTransform, check_pair
from dinov2_heads.data.loading import PAIR_ADVICE, UnreadableImageError, load_image
from dinov2_heads.data.manifest import read_manifest
from dinov2_heads.data.masks import load_mask

if TYPE_CHECKING:
    from PIL import Image

PathLike = str | os.PathLike[str]
#: (image, mask (H, W) int64) -> (image (3, H, W) float32, or uint8 pixels, mask (H, W) int64).
JointTransform = Callable[["Image.Image | Tensor", Tensor], tuple[Tensor, Tensor]]


class SegmentationDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and their masks; items are ``(image (3, H, W), mask (H, W) int64)``.

    Masks hold a class index per pixel, 255 where there is no label (see
    :func:`~dinov2_heads.data.load_mask` for the file kinds read). Each mask must have its
    image's size; a pair that differs raises a ``ValueError`` naming both files. An image or
    mask that cannot be read raises :class:`~dinov2_heads.data.UnreadableImageError` naming
    it, with the advice to fix the file or leave its pair out (the dataset reads every pair it
    is given; there is no option to skip one).

    Args:
        images: Image files.
        masks: Their mask files, in the same order.
        transform: Moves image and mask together; default
            :class:`~dinov2_heads.data.SegmentationTransform` (normalisation only).
            ``SegmentationTransform(normalize=False)`` yields ``uint8`` images instead, for a
            ``FrozenBackbone`` or ``Segmenter`` to normalise on its device.
        palette: For colour (RGB) masks: the colour of each class index.
    """

    #: It reads image files: ``extract_features(num_workers="auto")`` reads it with worker
    #: processes.
    reads_image_files: ClassVar[bool] = True

    def __init__(
        self,
        images: Sequence[PathLike],
        masks: Sequence[PathLike],
        transform: JointTransform | None = None,
        *,
        palette: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks; pair each image")
        if not images:
            raise ValueError("a SegmentationDataset needs at least one image and mask")
        self.images = [Path(p) for p in images]
        self.masks = [Path(p) for p in masks]
        self.transform: JointTransform = transform or SegmentationTransform()
        self.palette = palette

    @classmethod
    def from_folders(
        cls,
        image_dir: PathLike,
        mask_dir: PathLike,
        transform: JointTransform | None = None,
        *,
        mask_suffix: str = ".png",
        palette: Sequence[Sequence[int]] | None = None,
    ) -> SegmentationDataset:
        """Pairs ``image_dir/<path>.<ext>`` with ``mask_dir/<path><mask_suffix>``.

        Images are found recursively (sorted), hidden files left out. An image without its
        mask is an error that lists the missing masks.
        """
        image_root, mask_root = Path(image_dir), Path(mask_dir)
        for folder, what in ((image_root, "image"), (mask_root, "mask")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} folder {folder} does not exist")
        images = sorted(
            path
            for path in image_root.rglob("*")
            if path.is_file()
            and path.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in path.relative_to(image_root).parts)
        )
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {image_root}")
        masks = [
            mask_root / path.relative_to(image_root).with_suffix(mask_suffix) for path in images
        ]
        missing = [str(mask) for mask in masks if not mask.is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(images)} images have no mask in {mask_root} (masks "
                f"are named like their image, ending {mask_suffix!r}), e.g. {missing[:3]}"
            )
        return cls(images, masks, transform, palette=palette)

    @classmethod
    def from_manifest(
        cls,
        path: PathLike,
        transform: JointTransform | None = None,
        *,
        image_column: str = "image",
        mask_column: str = "mask",
        root: PathLike | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ) -> SegmentationDataset:
        """Pairs from a CSV/JSON manifest with an image column and a mask column.

        Relative paths start from ``root`` (default: the manifest's folder).
        """
        manifest = Path(path)
        rows = read_manifest(manifest)
        if not rows:
            raise ValueError(f"manifest {manifest} lists no images")
        base = Path(root) if root is not None else manifest.parent
        images, masks = [], []
        for number, row in enumerate(rows, 1):
            for column in (image_column, mask_column):
                if row.get(column) is None:
                    raise ValueError(
                        f"{manifest}, row {number}: the column {column!r} is missing or empty; "
                        f"the columns are {list(row)} (pass image_column= / mask_column=)"
                    )
            images.append(base / str(row[image_column]))
            masks.append(base / str(row[mask_column]))
        return cls(images, masks, transform, palette=palette)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """The transformed image (3, H, W) and mask (H, W)."""
        try:
            image = pil_to_tensor(load_image(self.images[index]))
            mask = load_mask(self.masks[index], palette=self.palette)
        except UnreadableImageError as error:
            raise UnreadableImageError(error.path, error.reason, PAIR_ADVICE, error.what) from error
        check_pair(image, mask, where=f"{self.images[index]} and {self.masks[index]}: ")
        return self.transform(image, mask)
