"""``dinov2-heads extract``: run a frozen backbone once over images into a feature cache."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.checkpoints.record import checkpoint_record
from dinov2_heads.commands import _common, _extract_dense
from dinov2_heads.commands._dataset_file import DATASET_FILE
from dinov2_heads.watchdog import STALL_WARNING

if TYPE_CHECKING:
    import torch

    from dinov2_heads.cache.manifest import Manifest
    from dinov2_heads.data import Preprocess

logger = logging.getLogger(__name__)

EXAMPLE = """\
example:
  dinov2-heads extract --checkpoint dinov2_vits14_pretrain.pth --out features/train train/
  dinov2-heads extract --checkpoint dinov2_vitb14_pretrain.pth --out features/attributes \\
      --preset vehicle_crop --keep patch_tokens --label-columns colour,type attributes.csv

IMAGES is a folder with one sub-folder per class (labels from the folder names), a CSV / TSV /
JSON / JSON Lines manifest (a "path" column and label columns; empty cells are missing labels),
or image files and folders of images (no labels). Run it again with the same arguments after an
interruption and it resumes where it stopped.

Segmentation and depth data: a folder of images with --masks FOLDER (PNG class indices, 255 =
no label) or --depths FOLDER (16-bit PNG with --depth-scale, or .npy metres), files named alike:
  dinov2-heads extract --checkpoint dinov2_vits14_pretrain.pth --out features/parts \\
      --masks parts/masks --class-names background,body,window --size 224 448 parts/images
  dinov2-heads extract --checkpoint dinov2_vits14_pretrain.pth --out features/nyu \\
      --depths nyu/depth --depth-scale nyu --dense-head DPTDepthHead nyu/rgb
The store keeps the blocks the --dense-head reads and the labels; `train` trains that head.
"""

#: What the command line prints after "interrupted" on Ctrl-C.
ON_INTERRUPT = (
    "run the same command again to resume where it stopped (the finished batches are kept)"
)

_MANIFEST_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract features of images once into a feature cache to train heads from",
        description="Run a frozen DINOv2 backbone over images once and store the features "
        "(a resumable, memory-mapped feature cache) with their labels.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="folder, manifest or images")
    parser.add_argument("--out", required=True, help="the feature store folder to write")
    _common.add_backbone_arguments(parser)
    _common.add_size_arguments(parser, default="official_eval")
    parser.add_argument(
        "--keep",
        choices=("pooled", "patch_tokens", "all"),
        default="pooled",
        help="pooled: class tokens and mean patch token (linear heads); patch_tokens: also every "
        "patch token (Conv1dNeck; large); all: also register tokens",
    )
    parser.add_argument(
        "--n-last-blocks",
        type=_common.positive_int,
        default=1,
        help="store the tokens of the last n blocks (4 for the official linear4 heads)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default="float16",
        help="storage dtype of the features (they are read back as float32)",
    )
    parser.add_argument(
        "--weights-dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the backbone's weights while extracting: float16 or bfloat16 run several times "
        "faster on a GPU, with features about 1e-3 (float16) or 1e-2 (bfloat16) from float32's, "
        "relative; default: float32 for a new store, as the store was started when resuming",
    )
    parser.add_argument(
        "--batch-size", type=_common.positive_int, default=64, help="images per backbone call"
    )
    parser.add_argument(
        "--num-workers",
        type=_workers,
        default="auto",
        help="image loading processes; auto: one per CPU available but one (at most 16)",
    )
    parser.add_argument(
        "--stall-warning",
        type=_seconds,
        default=STALL_WARNING,
        metavar="SECONDS",
        help="warn when no batch has come for this long (saying whether the image loading or "
        "the backbone is waiting, and what to try), again at 2x, 4x, ... as long; 0: never",
    )
    parser.add_argument(
        "--draft",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEG photos at least twice the input size at 1/2, 1/4 or 1/8 of their "
        "size (Pillow's draft mode: several times faster, within a few grey levels of full "
        "decoding); default: on for a new store, as the store was started when resuming",
    )
    parser.add_argument(
        "--label-columns",
        type=_column_list,
        action="extend",
        metavar="COLUMNS",
        help="manifest label columns, comma-separated (colour,type; default: all but the paths)",
    )
    parser.add_argument("--image-column", default="path", help="the manifest's path column")
    _common.add_on_error_argument(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="start again instead of resuming --out"
    )
    _extract_dense.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from dinov2_heads.cache import extract_features, remove_store
    from dinov2_heads.cache.manifest import MANIFEST
    from dinov2_heads.features import FrozenBackbone

    out = Path(args.out)
    started = _started(args, out)
    transform = _with_draft(args, _common.preprocessing(args, "official_eval"), out, started)
    # uint8 pixels from the workers, normalised by the backbone on its device: a quarter of the
    # bytes, the same features (the store's record of the preprocessing does not change).
    # Dense pairs have a transform of their own, which hands on uint8 pixels too.
    transform = transform.replace(normalize=False)
    dataset, description = _dataset(args, transform)
    # So that train can print the --checkpoint its heads run with (see _dataset_file).
    description["checkpoint"] = checkpoint_record(args.checkpoint)
    started_here = args.overwrite or not (out / MANIFEST).is_file()
    if not args.overwrite:
        _check_same_images(out, description)
    dense = isinstance(dataset, _extract_dense.DensePairs)
    backbone, weights_dtype = _common.load_backbone(args), _weights_dtype(args, started)
    frozen = (
        _extract_dense.frozen_backbone(args, backbone, weights_dtype, dataset.preprocessing)
        if dense
        else FrozenBackbone(
            backbone,
            n_last_blocks=args.n_last_blocks,
            dtype=weights_dtype,
            mean=transform.mean,
            std=transform.std,
        )
    )
    if args.overwrite:
        # Deletes only a store and its dataset.json; a folder holding anything else is refused.
        remove_store(out, companions=(DATASET_FILE,))
    try:
        store = extract_features(
            frozen,
            dataset,
            path=out,
            keep=args.keep,
            dtype=getattr(torch, args.dtype),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            preprocessing=dataset.preprocessing if dense else transform,
            class_names=(description["class_names"] or None) if dense else None,
            progress=not args.quiet,
            stall_warning=args.stall_warning or None,
        )
    except BaseException:
        # A store this run started and did not finish records its images too, so that the run
        # that resumes it can be checked against them.
        if started_here and (out / MANIFEST).is_file() and not (out / DATASET_FILE).exists():
            _write_description(out, description)
        raise
    _write_description(out, description)
    print(store)
    columns = description["class_names"]
    if dense:
        print("\n".join(_extract_dense.summary_lines(description)))
    elif columns:
        for column, names in columns.items():
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            print(f"  {column}: {len(names)} classes ({shown})")
    else:
        print("  no labels")
    if description["skipped"] and dense:
        print(_extract_dense.skipped_line(description))
    elif description["skipped"]:
        print(f"  skipped {len(description['skipped'])} unreadable image(s), listed in the log")
    print(f"image paths and class names: {out / DATASET_FILE}")
    return 0


def _seconds(text: str) -> float:
    """An argparse type: seconds >= 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 (0: never), got {text!r}")
    return seconds


def _workers(text: str) -> int | str:
    """An argparse type: ``auto`` or an int >= 0."""
    return text if text == "auto" else _common.non_negative_int(text)


def _started(args: argparse.Namespace, out: Path) -> Manifest | None:
    """The manifest of the store at ``--out`` that this run resumes, or ``None``: no store,
    ``--overwrite``, or a damaged manifest (extract_features then says what is wrong)."""
    from dinov2_heads.cache.manifest import is_store_manifest, read_manifest

    if args.overwrite or not is_store_manifest(out):
        return None
    try:
        return read_manifest(out)
    except ValueError:
        return None


def _with_draft(
    args: argparse.Namespace, transform: Preprocess, out: Path, started: Manifest | None
) -> Preprocess:
    """``transform`` with draft decoding as ``--draft`` / ``--no-draft`` say; without either,
    as the store at ``--out`` was ``started`` (so that it resumes with the same pixels), else on.

    Raises:
        ValueError: ``--draft`` or ``--no-draft`` asks for the other decoding than the store
            at ``--out`` was started with.
    """
    recorded: bool | None = None
    stored = started.preprocessing if started is not None else None
    if isinstance(stored, dict) and stored.get("type") == "Preprocess":
        # Stores made before draft decoding existed record no "draft": full decoding.
        recorded = bool(stored.get("draft", False))
    if args.draft is None:
        draft = True if recorded is None else recorded
        if recorded is False:
            logger.info(
                "resuming %s with JPEG files decoded at full size, as it was started (pass "
                "--overwrite to start again with --draft, faster for large photos)",
                out,
            )
    else:
        draft = args.draft
        if recorded is not None and recorded != draft:
            how = "with" if recorded else "without"
            flag = "--draft" if draft else "--no-draft"
            raise ValueError(
                f"--out {out} was started {how} draft decoding of JPEG files, and {flag} "
                f"asks for the other; leave out {flag} to resume it as it was started, or pass "
                "--overwrite (or another --out) to start again"
            )
    return transform.replace(draft=draft)


def _weights_dtype(args: argparse.Namespace, started: Manifest | None) -> torch.dtype | None:
    """The backbone's weights dtype: ``--weights-dtype``, else the one the store was
    ``started`` with (so that it resumes with the same features), else float32 (``None``)."""
    import torch

    name = args.weights_dtype
    if name is None and started is not None:
        name = started.backbone.weights_dtype
    dtype = getattr(torch, name or "float32", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype != torch.float32 else None


def _write_description(out: Path, description: dict[str, Any]) -> None:
    from dinov2_heads.atomic import atomic_write_bytes

    text = json.dumps(description, indent=1, ensure_ascii=False) + "\n"
    atomic_write_bytes(out / DATASET_FILE, text.encode("utf-8"))


def _check_same_images(out: Path, description: dict[str, Any]) -> None:
    """Refuse to resume (or reuse) a store whose ``dataset.json`` lists other images or labels.

    The store itself checks the weights, the preprocessing and the sample count, but not which
    images the samples are: without this, a finished store of other images of the same count
    would be returned as it is, beside a ``dataset.json`` describing this run's images.
    """
    path = out / DATASET_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        difference = _difference(stored, description)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        difference = f"cannot be read ({error})"
    if difference is not None:
        raise ValueError(
            f"--out {out} holds the features of other images or labels: its {DATASET_FILE} "
            f"{difference}; give the same IMAGES and options to resume, or pass --overwrite "
            "(or another --out) to start again"
        )


def _difference(stored: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between the recorded description and this run's, or ``None``."""
    if stored["kind"] != new["kind"]:
        return (
            f"records IMAGES of kind {stored['kind']!r} ({', '.join(stored['source'])}), this "
            f"run's are {new['kind']!r} ({', '.join(new['source'])})"
        )
    if stored["class_names"] != new["class_names"]:
        return (
            f"has label columns {list(stored['class_names'])} with their class names, this run "
            f"{list(new['class_names'])} with theirs"
        )
    old_paths, new_paths = stored["paths"], new["paths"]
    if len(old_paths) != len(new_paths):
        return f"lists {len(old_paths)} images, this run has {len(new_paths)}"
    for index, (old, path) in enumerate(zip(old_paths, new_paths, strict=True)):
        if old != path:
            return f"lists image {index} as {old}, this run has {path}"
    if stored.get("labels") != new.get("labels"):
        return "lists other mask or depth files than this run's"
    return None


def _column_list(text: str) -> list[str]:
    columns = [column.strip() for column in text.split(",")]
    if not all(columns):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated column names such as colour,type, got {text!r}"
        )
    return columns


def _dataset(args: argparse.Namespace, transform: Any) -> tuple[Any, dict[str, Any]]:
    """The dataset to extract, and what ``dataset.json`` records about it."""
    from dinov2_heads.data import ImageFolderDataset, ManifestDataset, check_images

    if _extract_dense.requested(args):
        return _extract_dense.dataset(args)

    inputs = [Path(item) for item in args.images]
    single = inputs[0] if len(inputs) == 1 else None
    dataset: Any
    if single is not None and single.is_file() and single.suffix.lower() in _MANIFEST_SUFFIXES:
        dataset = ManifestDataset(
            single,
            transform,
            image_column=args.image_column,
            label_columns=args.label_columns,
            on_error=args.on_error,
        )
        kind, class_names = "manifest", dataset.vocabularies
    elif single is not None and single.is_dir() and _has_class_folders(single):
        _check_no_manifest_options(args, inputs)
        _check_no_loose_images(single)
        dataset = ImageFolderDataset(single, transform, on_error=args.on_error)
        kind, class_names = "folder", dataset.vocabularies
    else:
        _check_no_manifest_options(args, inputs)
        paths, skipped = check_images(_common.image_paths(inputs), on_error=args.on_error)
        if not paths:
            raise ValueError("none of the images could be read; see the warnings above")
        dataset = _common.ImageFiles(paths, transform, skipped)
        kind, class_names = "files", {}
    description = {
        "source": [str(item) for item in inputs],
        "kind": kind,
        "class_names": {column: list(names) for column, names in class_names.items()},
        "paths": [str(path) for path in dataset.paths],
        "skipped": [
            {"path": str(record.path), "reason": record.reason}
            for record in getattr(dataset, "skipped", ())
        ],
    }
    return dataset, description


def _check_no_manifest_options(args: argparse.Namespace, inputs: list[Path]) -> None:
    """Class folders and plain images have no columns: a column option would be ignored."""
    got = ", ".join(str(item) for item in inputs)
    if args.label_columns:
        raise ValueError(
            "--label-columns needs one manifest (.csv, .tsv, .json or .jsonl) as IMAGES, "
            f"got {got}; separate several columns with commas: --label-columns colour,type"
        )
    if args.image_column != "path":
        raise ValueError(
            f"--image-column needs one manifest (.csv, .tsv, .json or .jsonl) as IMAGES, got "
            f"{got}; leave it out for folders and image files"
        )


def _check_no_loose_images(folder: Path) -> None:
    """Refuse images beside the class sub-folders: they have no label and would be left out."""
    from dinov2_heads.data import IMAGE_EXTENSIONS

    loose = sorted(
        child.name
        for child in folder.iterdir()
        if child.is_file()
        and not child.name.startswith(".")
        and child.suffix.lower() in IMAGE_EXTENSIONS
    )
    if loose:
        classes = sorted(
            child.name
            for child in folder.iterdir()
            if child.is_dir() and not child.name.startswith(".")
        )
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        raise ValueError(
            f"{folder} holds {len(loose)} image(s) beside its class sub-folders ({shown}), "
            f"such as {loose[0]}; labels come from the sub-folder names, so move each image "
            "into the sub-folder of its class, or name the images and folders one by one "
            "(several IMAGES) to extract all of them without labels"
        )


def _has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` holds sub-folders (one per class) rather than images at its top."""
    return any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())
