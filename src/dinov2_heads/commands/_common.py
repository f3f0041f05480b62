"""Arguments and helpers shared by the subcommands that read images and run a backbone."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from torch import nn

    from dinov2_heads.backbone import DinoVisionTransformer
    from dinov2_heads.data import Preprocess, SkippedImage
    from dinov2_heads.export import HeadCheckpoint


@contextlib.contextmanager
def own_account(args: argparse.Namespace) -> Iterator[None]:
    """The library's INFO lines off (unless ``--debug``) for a command that prints every step."""
    library = logging.getLogger("dinov2_heads")
    previous = library.level
    if not args.debug:
        library.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        library.setLevel(previous)


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``IMAGES``: image files or folders (read by :func:`image_paths`)."""
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (required), ``--variant`` and ``--device``."""
    from dinov2_heads.backbone import list_variants

    parser.add_argument(
        "--checkpoint",
        required=True,
        help="the DINOv2 backbone checkpoint (.pth, .pt, .bin or .safetensors; official, "
        "Hugging Face or timm layout); its architecture is read from the weights",
    )
    parser.add_argument(
        "--variant",
        choices=list_variants(),
        help="refuse the checkpoint unless its weights are this variant",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to run the backbone: cpu, cuda, cuda:1, ... (auto: cuda if available)",
    )


def add_size_arguments(
    parser: argparse.ArgumentParser, default: str | None, default_text: str | None = None
) -> None:
    """``--preset`` and ``--size`` (exclusive); ``default_text`` says what no option means."""
    from dinov2_heads.data import list_presets

    group = parser.add_mutually_exclusive_group()
    shown = default_text or default
    group.add_argument(
        "--preset",
        choices=list_presets(),
        help=f"preprocessing preset: official_eval = resize 256, centre crop 224; vehicle_crop "
        f"= resize to 126x252 (default: {shown})",
    )
    group.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize every image to H x W instead (rounded to multiples of 14)",
    )


def add_on_error_argument(parser: argparse.ArgumentParser) -> None:
    """``--on-error raise|skip``."""
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="unreadable images: stop (raise) or leave them out with a warning (skip)",
    )


def preprocessing(args: argparse.Namespace, default: Preprocess | str) -> Preprocess:
    """The transform that ``--preset`` / ``--size`` ask for, else ``default``."""
    from dinov2_heads.data import Preprocess, get_preset

    if getattr(args, "size", None) is not None:
        return Preprocess.for_size((args.size[0], args.size[1]))
    if getattr(args, "preset", None) is not None:
        return get_preset(args.preset)
    return get_preset(default) if isinstance(default, str) else default


def device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"--device {name!r} is not a device name ({error}); use cpu or cuda"
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asks for CUDA, which this machine lacks; use cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            "numbered from 0"
        )
    return chosen


def load_backbone(args: argparse.Namespace) -> DinoVisionTransformer:
    """The backbone of ``--checkpoint`` (checked against ``--variant``) on ``--device``.

    A heads file or a released head file given as ``--checkpoint`` is named by the loader
    (:func:`~dinov2_heads.checkpoints.read_backbone`), with the option it goes to.
    """
    from dinov2_heads.checkpoints import load_backbone as load

    return load(args.checkpoint, variant=args.variant).to(device(args.device))


def add_backbone_check_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-backbone-check``: the way past :func:`check_backbone`."""
    parser.add_argument(
        "--no-backbone-check",
        action="store_true",
        help="do not refuse a backbone whose weights differ from the one the heads were trained on",
    )


def check_backbone(args: argparse.Namespace, heads: HeadCheckpoint, backbone: nn.Module) -> None:
    """Refuse ``backbone`` unless the heads file was trained on it, or ``--no-backbone-check``.

    The one check of every command that runs a file written by ``save_heads`` (``predict``,
    ``export``, ``segment``, ``depth``): the variant and the weights fingerprint recorded in
    the file against the checkpoint given (:meth:`~dinov2_heads.export.HeadCheckpoint.
    check_backbone`), so the wrong weights are an error rather than wrong answers.

    Raises:
        ValueError: Another variant or other weights; the message names both and the fix.
    """
    if not args.no_backbone_check:
        heads.check_backbone(backbone)


def image_paths(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly, and those found (recursively, sorted) in named folders.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: No image was found.
    """
    from dinov2_heads.data import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        names = ", ".join(str(item) for item in inputs)
        raise ValueError(
            f"no images found in {names}; give image files or folders holding files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )
    return found


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a folder to write into, checked before any work (nothing is created).

    Raises:
        NotADirectoryError: ``path``, or a folder above it, is a file: the error names it and
            ``option``, instead of the system's "File exists" once the work is done.
    """
    folder = Path(path)
    for place in (folder, *folder.parents):
        if place.exists() and not place.is_dir():
            where = "" if place == folder else f" (it lies inside {place})"
            raise NotADirectoryError(
                f"{option} {folder} cannot be a folder{where}: {place} is a file; pass a "
                "folder (it is created if missing), or move the file away"
            )
    return folder


def check_output_file(path: str | os.PathLike[str], example: str, option: str = "--out") -> Path:
    """``path`` as one file to write, checked before any work (nothing is created).

    The commands that write one file (``pca``, ``search``, ``export``) replace an existing
    ``--out`` file, atomically, as saving a file does anywhere; what cannot be written at all
    is refused here instead of once the work is done.

    Args:
        path: The ``--out`` file.
        example: A file name for the message (``pca.png``).
        option: The option, for the message.

    Raises:
        IsADirectoryError: ``path`` is a folder; the message suggests a file inside it.
        NotADirectoryError: A folder above ``path`` is a file.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{option} {target} is a folder; pass a file name inside it, e.g. {target / example}"
        )
    for place in target.parents:
        if place.exists() and not place.is_dir():
            raise NotADirectoryError(
                f"{option} {target} lies inside {place}, which is a file; pass a file in a "
                "folder, or move the file away"
            )
    return target


def make_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """The folder ``path``, checked as :func:`check_output_folder` checks it, then created
    with its parents where missing."""
    folder = check_output_folder(path, option)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ImageFiles(Dataset[Tensor]):
    """Unlabelled image files; items are ``transform(image)``, (3, H, W).

    ``skipped`` records the files left out as unreadable before the dataset was made.
    """

    #: Read with worker processes by ``extract_features(num_workers="auto")``.
    reads_image_files = True

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Preprocess,
        skipped: Sequence[SkippedImage] = (),
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.skipped = tuple(skipped)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        from dinov2_heads.data import load_image

        return self.transform(load_image(self.paths[index], draft_for=self.transform))


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """``header`` and ``rows`` as left-aligned columns two spaces apart, no trailing spaces."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def batched(items: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    """``items`` in consecutive chunks of ``size``."""
    if size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value
