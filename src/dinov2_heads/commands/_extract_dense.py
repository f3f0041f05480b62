"""``dinov2-heads extract`` for dense heads: images with masks or depth maps.

The pairs are read by :class:`~dinov2_heads.data.SegmentationDataset` and
:class:`~dinov2_heads.data.DepthDataset` (two folders of files named alike, or a manifest with
an image and a label column), resized together by :class:`PairPreprocess` (``--size`` /
``--preset``; each image's own size by default), and the backbone keeps the blocks that the
chosen dense head reads (``FrozenBackbone.for_heads``), beside the masks or depth maps.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.data.functional import IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE

if TYPE_CHECKING:
    from PIL import Image

    from dinov2_heads.data import Preprocess
    from dinov2_heads.features import FrozenBackbone

logger = logging.getLogger(__name__)

#: The options that make IMAGES dense data, and the task each gives.
_SOURCES = {
    "masks": "segmentation",
    "mask_column": "segmentation",
    "depths": "depth",
    "depth_column": "depth",
}
#: The options that only dense data takes.
_DENSE_ONLY = ("class_names", "dense_head", "layers", "depth_scale")
#: The head each task gets without --dense-head.
DEFAULT_HEADS = {"segmentation": "LinearSegmentationHead", "depth": "LinearDepthHead"}
#: The value of a pixel without a label, when a crop pads: masks 255, depth maps 0.
_PAD = {"segmentation": 255, "depth": 0}
_MANIFEST_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The dense options, in a group of their own."""
    from dinov2_heads.training import DENSE_TASKS

    group = parser.add_argument_group(
        "segmentation and depth data",
        # The formatter keeps descriptions as written: wrapped here.
        "IMAGES with a mask or a depth map per image: the store keeps the blocks a dense head\n"
        "reads and the masks or depth maps, which `train` learns per pixel. Images and labels\n"
        "keep their size (sides that are multiples of 14, the same for every image) unless\n"
        "--size or --preset resizes both (labels by nearest neighbour).",
    )
    group.add_argument(
        "--masks",
        metavar="FOLDER",
        help="segmentation masks (PNG of class indices, 255 = no label) named like the images "
        "of the one folder IMAGES (images/a/1.jpg pairs with FOLDER/a/1.png)",
    )
    group.add_argument(
        "--mask-column",
        metavar="COLUMN",
        help="with a manifest as IMAGES: its column of mask paths (images in --image-column)",
    )
    group.add_argument(
        "--depths",
        metavar="FOLDER",
        help="depth maps (16-bit PNG with --depth-scale, or .npy in metres; 0 = no depth) named "
        "like the images of the one folder IMAGES",
    )
    group.add_argument(
        "--depth-column",
        metavar="COLUMN",
        help="with a manifest as IMAGES: its column of depth map paths",
    )
    group.add_argument(
        "--depth-scale",
        type=_depth_scale,
        metavar="SCALE",
        help="PNG depth values per metre: nyu (1000), kitti (256) or a number (default: none, "
        "for .npy files in metres)",
    )
    group.add_argument(
        "--class-names",
        type=_names,
        metavar="NAMES",
        help="the mask classes 0, 1, ..., comma-separated: background,body,wheel (default: "
        "none; train counts the classes in the masks)",
    )
    group.add_argument(
        "--dense-head",
        choices=sorted(DENSE_TASKS),
        help="the head whose blocks are stored (default: LinearSegmentationHead with masks, "
        "LinearDepthHead with depth maps); train trains it when given no --heads",
    )
    group.add_argument(
        "--layers",
        type=int,
        choices=(1, 4),
        help="the blocks the --dense-head reads: 1 (the official linear heads) or 4 (the "
        "'ms' segmentation and linear4 depth heads); DPTDepthHead reads four (default: 1)",
    )


def requested(args: argparse.Namespace) -> bool:
    """Whether IMAGES come with masks or depth maps; checks the dense options fit together.

    Raises:
        ValueError: Two label sources, a dense-only option without one, or a head type that
            does not learn the labels given.
    """
    from dinov2_heads.training import DENSE_TASKS

    given = [name for name in _SOURCES if getattr(args, name, None) is not None]
    if len(given) > 1:
        options = " and ".join(f"--{name.replace('_', '-')}" for name in given)
        raise ValueError(f"{options} name two kinds of labels; give one of them")
    if not given:
        stray = [name for name in _DENSE_ONLY if getattr(args, name, None) is not None]
        if stray:
            option = f"--{stray[0].replace('_', '-')}"
            raise ValueError(
                f"{option} is for segmentation or depth data; add --masks FOLDER or --depths "
                "FOLDER (--mask-column / --depth-column with a manifest)"
            )
        return False
    task = _SOURCES[given[0]]
    if args.dense_head is not None and DENSE_TASKS[args.dense_head] != task:
        raise ValueError(
            f"--dense-head {args.dense_head} learns {DENSE_TASKS[args.dense_head]}, but "
            f"--{given[0].replace('_', '-')} gives {task} labels; choose a "
            f"{'segmentation' if task == 'segmentation' else 'depth'} head or leave it out"
        )
    if task == "depth" and args.class_names is not None:
        raise ValueError("--class-names names the classes of masks; depth maps have none")
    if task == "segmentation" and args.depth_scale is not None:
        raise ValueError("--depth-scale reads depth PNG files; masks hold class indices")
    if args.label_columns:
        raise ValueError(
            "--label-columns reads class labels; the labels of segmentation or depth data are "
            "the masks or depth maps"
        )
    return True


def task_of(args: argparse.Namespace) -> str:
    """``"segmentation"`` or ``"depth"``: what the labels of :func:`requested` data are."""
    return next(_SOURCES[name] for name in _SOURCES if getattr(args, name, None) is not None)


@dataclass(frozen=True)
class PairPreprocess:
    """(image ``uint8`` (3, H, W), label) -> (normalised image, label), resized together.

    The label is a mask (H, W) of class indices or a depth map (1, H, W) in metres. The image
    is resized as :class:`~dinov2_heads.data.Preprocess` resizes it (antialiased bicubic); the
    label by nearest neighbour (no class or depth is made up between two pixels); a crop
    takes the same window of both (a label padded where the crop is larger: 255 for masks, 0
    for depth maps).

    Attributes:
        resize: ``None`` (keep each image's size), an (H, W), or an int for the shorter side.
        crop: A centre crop (H, W) after the resize, or ``None``.
        mean: Normalisation mean (RGB).
        std: Normalisation standard deviation (RGB).
        patch_size: Output sides must be multiples of it.
        normalize: ``False`` returns the resized and cropped ``uint8`` pixels, for the
            ``FrozenBackbone`` (built with the same ``mean`` and ``std``) to normalise on its
            device, as ``Preprocess(..., normalize=False)`` does: the features are the same
            (bit for bit on the CPU), so :meth:`description` leaves it out and a store
            started one way resumes the other way.
    """

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = PATCH_SIZE
    normalize: bool = True

    @classmethod
    def from_preprocess(cls, preprocess: Preprocess) -> PairPreprocess:
        """The same resize, crop and normalisation as ``preprocess`` (a ``--preset``)."""
        return cls(
            resize=preprocess.resize,
            crop=preprocess.crop,
            mean=preprocess.mean,
            std=preprocess.std,
            patch_size=preprocess.patch_size,
            normalize=preprocess.normalize,
        )

    def __call__(self, image: Image.Image | Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        from dinov2_heads.data.functional import (
            center_crop,
            normalize,
            pil_to_tensor,
            resize,
            shorter_side_size,
            to_float,
        )

        if not isinstance(image, Tensor):
            image = pil_to_tensor(image)
        if not self.normalize and image.dtype != torch.uint8:
            raise ValueError(
                f"PairPreprocess(normalize=False) hands on uint8 pixels 0..255, got a "
                f"{image.dtype} image; pass decoded uint8 pixels or keep normalize=True"
            )

        height, width = int(image.shape[-2]), int(image.shape[-1])
        if self.resize is not None:
            size = (
                shorter_side_size(height, width, self.resize)
                if isinstance(self.resize, int)
                else (int(self.resize[0]), int(self.resize[1]))
            )
            image = resize(image, size)
            label = _nearest(label, size)
        if self.crop is not None:
            label = _crop(label, self.crop)
            image = center_crop(image, self.crop)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if size[0] % self.patch_size or size[1] % self.patch_size:
            from dinov2_heads.data.functional import nearest_valid_size

            suggestion = nearest_valid_size(size, self.patch_size)
            raise ValueError(
                f"the image is {size[0]}x{size[1]}, not a multiple of {self.patch_size}; pass "
                f"--size {suggestion[0]} {suggestion[1]} to resize the images and their labels"
            )
        if not self.normalize:
            return image.contiguous(), label
        return normalize(to_float(image), self.mean, self.std), label

    def description(self) -> dict[str, Any]:
        """What the feature store records: the class name and fields.

        ``normalize`` never appears: whether the images are normalised here or by the
        backbone on its device, the features are the same.
        """
        return {
            "type": type(self).__name__,
            "resize": self.resize,
            "crop": self.crop,
            "mean": self.mean,
            "std": self.std,
            "patch_size": self.patch_size,
            "labels": "nearest",
        }


def _nearest(label: Tensor, size: tuple[int, int]) -> Tensor:
    """A mask (H, W) or depth map (1, H, W) resized by nearest neighbour, its dtype kept."""
    batch = label[None, None] if label.ndim == 2 else label[None]
    resized = torch.nn.functional.interpolate(batch.float(), size=size, mode="nearest-exact")
    return resized[0, 0].to(label.dtype) if label.ndim == 2 else resized[0].to(label.dtype)


def _crop(label: Tensor, size: tuple[int, int]) -> Tensor:
    """The centre crop of ``center_crop``, padded with "no label" where the crop is larger."""
    crop_h, crop_w = size
    height, width = int(label.shape[-2]), int(label.shape[-1])
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        value = _PAD["depth" if label.is_floating_point() else "segmentation"]
        amounts = (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2)
        label = torch.nn.functional.pad(label, amounts, value=value)
        height, width = int(label.shape[-2]), int(label.shape[-1])
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return label[..., top : top + crop_h, left : left + crop_w]


class DensePairs(Dataset[tuple[Tensor, Tensor]]):
    """The pairs of a ``SegmentationDataset`` or ``DepthDataset``, read by worker processes.

    Attributes:
        pairs: The dataset, its transform :attr:`preprocessing`.
        preprocessing: How each pair is resized and normalised (recorded in the store).
        paths: The image files, in order.
        labels: The mask or depth files, in order.
        skipped: The pairs left out (``--on-error skip``): their image, or their label, could
            not be read; a record per pair, under its image's path.
    """

    #: Read with worker processes by ``extract_features(num_workers="auto")``.
    reads_image_files = True

    def __init__(
        self,
        pairs: Dataset[tuple[Tensor, Tensor]],
        preprocessing: PairPreprocess,
        paths: Sequence[Path],
        labels: Sequence[Path],
        skipped: Sequence[Any] = (),
    ) -> None:
        self.pairs = pairs
        self.preprocessing = preprocessing
        self.paths = list(paths)
        self.labels = list(labels)
        self.skipped = tuple(skipped)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from dinov2_heads.data import DepthDataset, UnreadableDepthError, UnreadableImageError

        try:
            return self.pairs[index]
        except UnreadableImageError as error:
            # The dataset advises leaving the pair out in Python; here --on-error skip does.
            label = "depth map" if isinstance(self.pairs, DepthDataset) else "mask"
            fix = f"fix or replace the file, or pass {_skip_option(label)}"
            raise UnreadableImageError(error.path, error.reason, fix, error.what) from error
        except UnreadableDepthError as error:
            fix = f"{error.fix}, or pass {_skip_option('depth map')}"
            raise UnreadableDepthError(error.path, error.reason, fix) from error
        except ValueError as error:
            if str(self.paths[index]) in str(error):
                raise
            raise ValueError(f"{self.paths[index]}: {error}") from error


def _skip_option(label: str) -> str:
    """The end of the advice of an unreadable file of a pair, on the command line."""
    return f"--on-error skip to leave out pairs whose image or {label} cannot be read"


def preprocessing(args: argparse.Namespace) -> PairPreprocess:
    """``--size`` (rounded to multiples of 14), ``--preset``, or each image's own size.

    The images stay ``uint8`` pixels (``normalize=False``): the backbone normalises them on
    its device, with the same mean and std (see :func:`frozen_backbone`).
    """
    from dinov2_heads.data import get_preset
    from dinov2_heads.data.functional import nearest_valid_size

    if args.size is not None:
        size = nearest_valid_size((args.size[0], args.size[1]))
        return PairPreprocess(resize=size, normalize=False)
    if args.preset is not None:
        return PairPreprocess.from_preprocess(get_preset(args.preset).replace(normalize=False))
    return PairPreprocess(normalize=False)


def dataset(args: argparse.Namespace) -> tuple[DensePairs, dict[str, Any]]:
    """The pairs to extract, and what ``dataset.json`` records about them."""
    from dinov2_heads.data import DepthDataset, SegmentationDataset, SkippedImage, check_images

    task = task_of(args)
    pairs = _pairs(args, task)
    skipped: list[Any] = []
    # Pairs left out for their label: the label's path, under the image's in ``skipped``.
    label_of: dict[Path, tuple[Path, str]] = {}
    if args.on_error == "skip":
        readable, skipped = check_images([image for image, _ in pairs], on_error="skip")
        kept = set(readable)
        pairs = [(image, label) for image, label in pairs if image in kept]
        pairs, label_of = _readable_labels(pairs, task, args)
        skipped += [SkippedImage(image, reason) for image, (_, reason) in label_of.items()]
        if not pairs:
            raise ValueError("none of the pairs could be read; see the warnings above")
    transform = preprocessing(args)
    images, labels = [image for image, _ in pairs], [label for _, label in pairs]
    inner: Dataset[tuple[Tensor, Tensor]] = (
        SegmentationDataset(images, labels, transform)
        if task == "segmentation"
        else DepthDataset(pairs, scale=args.depth_scale, transform=transform)
    )
    data = DensePairs(inner, transform, images, labels, skipped)
    config = {"layers": args.layers} if args.layers is not None else {}
    head = {"type": args.dense_head or DEFAULT_HEADS[task], "config": config}
    description = {
        "source": [str(item) for item in args.images],
        "kind": task,
        "class_names": {"label": list(args.class_names)} if args.class_names else {},
        "paths": [str(path) for path in images],
        "labels": [str(path) for path in labels],
        "dense_head": head,
        "skipped": [_skipped_record(r, label_of) for r in skipped],
    }
    return data, description


def _skipped_record(record: Any, label_of: dict[Path, tuple[Path, str]]) -> dict[str, str]:
    """What ``dataset.json`` keeps of a pair left out: its image, the label when that was the
    file that could not be read, and why."""
    entry = {"path": str(record.path)}
    if record.path in label_of:
        entry["label"] = str(label_of[record.path][0])
    return {**entry, "reason": record.reason}


def _readable_labels(
    pairs: list[tuple[Path, Path]], task: str, args: argparse.Namespace
) -> tuple[list[tuple[Path, Path]], dict[Path, tuple[Path, str]]]:
    """The pairs whose mask or depth file can be read, and for each image left out its label
    file and why (``--on-error skip``), with a warning per file.

    Each label file is read once, as the dataset reads it; only files that cannot be read
    are left out: a mask of another size or a negative depth still stops the extraction.
    """
    from dinov2_heads.data import UnreadableDepthError, UnreadableImageError
    from dinov2_heads.data.depth_io import read_depth
    from dinov2_heads.data.masks import load_mask

    kept: list[tuple[Path, Path]] = []
    left_out: dict[Path, tuple[Path, str]] = {}
    what = "mask" if task == "segmentation" else "depth map"
    for image, label in pairs:
        try:
            if task == "segmentation":
                load_mask(label)
            else:
                read_depth(label, scale=args.depth_scale)
        except (UnreadableImageError, UnreadableDepthError) as error:
            reason = f"its {what} {label} cannot be read: {error.reason}"
            logger.warning("skipped %s: %s", image, reason)
            left_out[image] = (label, reason)
        else:
            kept.append((image, label))
    return kept, left_out


def _pairs(args: argparse.Namespace, task: str) -> list[tuple[Path, Path]]:
    """(image, label) files from the folders or the manifest the options name."""
    from dinov2_heads.data import DepthDataset, SegmentationDataset

    inputs = [Path(item) for item in args.images]
    folder = args.masks if task == "segmentation" else args.depths
    option = "--masks" if task == "segmentation" else "--depths"
    source = inputs[0]
    if folder is not None:
        if len(inputs) != 1 or not source.is_dir():
            raise ValueError(
                f"{option} pairs the images of one folder with {folder}; give that folder as "
                f"IMAGES, got {', '.join(map(str, inputs))}"
            )
        if task == "depth":
            found = DepthDataset.from_folders(source, folder, scale=args.depth_scale)
            return list(found.pairs)
        try:
            masks = SegmentationDataset.from_folders(source, folder)
        except ValueError as error:
            raise ValueError(
                f"{error}; add the missing masks, or move those images out of {source}"
            ) from None
        return list(zip(masks.images, masks.masks, strict=True))
    column = args.mask_column if task == "segmentation" else args.depth_column
    if len(inputs) != 1 or source.suffix.lower() not in _MANIFEST_SUFFIXES:
        option = "--mask-column" if task == "segmentation" else "--depth-column"
        raise ValueError(
            f"{option} reads a manifest (.csv, .tsv, .json or .jsonl) as IMAGES, got "
            f"{', '.join(map(str, inputs))}; for folders use {option.split('-')[2]}s FOLDER"
        )
    if task == "depth":
        manifest = DepthDataset.from_manifest(
            source, image_column=args.image_column, depth_column=column, scale=args.depth_scale
        )
        return list(manifest.pairs)
    listed = SegmentationDataset.from_manifest(
        source, image_column=args.image_column, mask_column=column
    )
    return list(zip(listed.images, listed.masks, strict=True))


def frozen_backbone(
    args: argparse.Namespace,
    backbone: torch.nn.Module,
    dtype: torch.dtype | None,
    transform: PairPreprocess | None = None,
) -> FrozenBackbone:
    """The backbone, keeping the blocks that the ``--dense-head`` (with ``--layers``) reads.

    It normalises ``uint8`` images with the ``transform``'s mean and std (ImageNet's without
    one).
    """
    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.heads import build_head
    from dinov2_heads.heads.registry import HEAD_TYPES

    task = task_of(args)
    kind = args.dense_head or DEFAULT_HEADS[task]
    import inspect

    accepted = inspect.signature(HEAD_TYPES[kind]).parameters
    config: dict[str, Any] = {"embed_dim": int(getattr(backbone, "embed_dim"))}  # noqa: B009
    if "num_classes" in accepted:
        config["num_classes"] = max(1, len(args.class_names or ()))
    if args.layers is not None:
        if "layers" not in accepted:
            raise ValueError(f"--layers sets the blocks of the linear heads; {kind} reads four")
        config["layers"] = args.layers
    head = build_head(kind, config)
    normalization = {"mean": transform.mean, "std": transform.std} if transform else {}
    return FrozenBackbone.for_heads(
        backbone, head, n_last_blocks=args.n_last_blocks, dtype=dtype, **normalization
    )


def summary_lines(description: dict[str, Any]) -> list[str]:
    """What ``extract`` prints about the labels of dense data."""
    head = description["dense_head"]
    layers = head["config"].get("layers")
    reads = f"{head['type']}" + (f" (layers={layers})" if layers is not None else "")
    if description["kind"] == "depth":
        what = "depth maps in metres"
    else:
        names = description["class_names"].get("label")
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else ""
        what = f"masks of {len(names)} classes ({shown})" if names else "masks (class indices)"
    return [f"  label: {what}", f"  blocks stored for {reads}"]


def skipped_line(description: dict[str, Any]) -> str:
    """What ``extract --on-error skip`` prints about the pairs it left out, by cause:
    ``"  skipped 3 pair(s) (1 unreadable image(s), 2 unreadable mask(s)), listed in the log"``.
    """
    skipped = description["skipped"]
    labels = sum(1 for entry in skipped if "label" in entry)
    what = "depth map(s)" if description["kind"] == "depth" else "mask(s)"
    causes = [
        f"{count} unreadable {name}"
        for count, name in ((len(skipped) - labels, "image(s)"), (labels, what))
        if count
    ]
    return f"  skipped {len(skipped)} pair(s) ({', '.join(causes)}), listed in the log"


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated class names such as background,body,wheel, "
            f"got {text!r}"
        )
    return names


def _depth_scale(text: str) -> str | float:
    from dinov2_heads.data import DEPTH_SCALES

    if text.lower() in DEPTH_SCALES:
        return text.lower()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(sorted(DEPTH_SCALES))} or a positive number of PNG values "
            f"per metre, got {text!r}"
        )
    return value
