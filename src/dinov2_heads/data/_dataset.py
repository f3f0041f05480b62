"""The part shared by the folder and manifest datasets: files, labels, unreadable images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.loading import (
    OnError,
    SkippedImage,
    check_images,
    check_on_error,
    load_image,
)

if TYPE_CHECKING:
    from PIL import Image

Transform = Callable[["Image.Image"], Tensor]
LabelT = TypeVar("LabelT")


class ImageDataset(Dataset[tuple[Tensor, LabelT]], Generic[LabelT]):
    """Image files with one label record each; items are ``(transform(image), labels)``.

    With ``on_error="skip"`` every file is decoded once at construction (JPEG files at 1/8 of
    each side, which finds the same broken files as a full decode; see
    :func:`~dinov2_heads.data.check_images`), so the unreadable ones are known (each logged as
    a warning, all listed in :attr:`skipped`) before training starts, and the dataset holds
    only the readable ones. With ``"raise"`` nothing is read up front and
    an unreadable file raises :class:`~dinov2_heads.data.UnreadableImageError` naming its path
    when its item is loaded.

    Attributes:
        paths: The image files, in item order.
        transform: PIL image -> (3, H, W) tensor.
        skipped: Files left out as unreadable (only with ``on_error="skip"``).
        reads_image_files: True: ``extract_features(num_workers="auto")`` reads it with worker
            processes.
    """

    reads_image_files: ClassVar[bool] = True

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[LabelT],
        transform: Transform | None,
        on_error: OnError,
    ) -> None:
        from dinov2_heads.data.preprocess import get_preset

        check_on_error(on_error)
        self.transform: Transform = (
            transform if transform is not None else get_preset("official_eval")
        )
        self.skipped: tuple[SkippedImage, ...] = ()
        keep = list(range(len(paths)))
        if on_error == "skip":
            _, skipped = check_images(paths, on_error="skip")
            bad = {record.path for record in skipped}
            keep = [i for i in keep if Path(paths[i]) not in bad]
            self.skipped = tuple(skipped)
        self.paths: list[Path] = [Path(paths[i]) for i in keep]
        self._labels: list[LabelT] = [labels[i] for i in keep]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, LabelT]:
        """The transformed image (3, H, W) and its labels."""
        # A transform that allows it (Preprocess(..., draft=True)) has large JPEGs decoded at
        # reduced size.
        image = load_image(self.paths[index], draft_for=self.transform)
        return self.transform(image), self._labels[index]
