"""``ImageFolderDataset``: one sub-folder per class, class names sorted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dinov2_heads.data._dataset import ImageDataset, Transform
from dinov2_heads.data.loading import OnError

logger = logging.getLogger(__name__)

#: File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


class ImageFolderDataset(ImageDataset[int]):
    """Images in ``root/<class name>/...``; items are ``(image (3, H, W), class index)``.

    Class indices follow the sorted class-folder names. Images may sit in nested folders below
    a class folder. Hidden files and folders and files without an image extension are ignored
    (their count is logged at debug level); an empty class folder keeps its index, with a
    warning, so the class list stays the same as the folder list.

    Args:
        root: The folder that holds one sub-folder per class.
        transform: PIL image -> (3, H, W); default the ``"official_eval"`` preset. A
            ``Preprocess(..., draft=True)`` has large JPEG photos decoded at reduced size
            (Pillow's draft mode), several times faster.
        on_error: ``"raise"`` (an unreadable image raises when loaded) or ``"skip"`` (every
            image is checked now; unreadable ones are logged, listed in :attr:`skipped` and
            left out).
        extensions: File endings to read as images.
        label_name: The name of the label in :attr:`vocabularies` (a head's name, say).

    Attributes:
        classes: The class names, sorted; index i is class ``classes[i]``.
        class_to_idx: Class name -> index.
        targets: The class index of every item.
        vocabularies: ``{label_name: classes}``, the same shape as a manifest's.

    Example:
        ``ImageFolderDataset("flowers", transform=get_preset("official_eval"))[0]`` is a
        (3, 224, 224) tensor and an int.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        *,
        on_error: OnError = "raise",
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        label_name: str = "label",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and _visible(p))
        if not class_dirs:
            raise ValueError(
                f"{self.root} has no class sub-folders; expected the layout "
                f"{self.root}/<class name>/<image files>"
            )
        self.classes: tuple[str, ...] = tuple(p.name for p in class_dirs)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self.label_name = label_name
        endings = tuple(e.lower() for e in extensions)
        paths: list[Path] = []
        labels: list[int] = []
        ignored = 0
        for index, class_dir in enumerate(class_dirs):
            found = 0
            for path in sorted(class_dir.rglob("*")):
                relative = path.relative_to(class_dir).parts
                if not path.is_file() or not all(_visible(Path(part)) for part in relative):
                    continue
                if path.suffix.lower() not in endings:
                    ignored += 1
                    continue
                paths.append(path)
                labels.append(index)
                found += 1
            if not found:
                logger.warning("class folder %s holds no images", class_dir)
        if ignored:
            logger.debug("ignored %d non-image files under %s", ignored, self.root)
        if not paths:
            raise ValueError(
                f"no images with endings {list(endings)} under {self.root}; check the folder "
                "or pass extensions="
            )
        super().__init__(paths, labels, transform, on_error)

    @property
    def targets(self) -> list[int]:
        """The class index of every item."""
        return list(self._labels)

    @property
    def vocabularies(self) -> dict[str, tuple[str, ...]]:
        """``{label_name: classes}``."""
        return {self.label_name: self.classes}

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.classes)
