"""``dinov2-heads segment``: a segmentation head + a backbone checkpoint + images -> label maps."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common, _dense
from dinov2_heads.commands._dense_heads import pick_dense_head

if TYPE_CHECKING:
    from torch import nn

    from dinov2_heads.dense import SegmentationPreset

logger = logging.getLogger(__name__)

#: What Ctrl-C leaves: every file is written to a temporary file, then renamed.
ON_INTERRUPT = (
    "the label maps and overlays written before are complete (no file is left half written); "
    "run the same command again with --overwrite to write them all"
)

EXAMPLE = """\
example:
  dinov2-heads segment street.jpg --heads dinov2_vits14_ade20k_linear_head.pth \\
      --checkpoint dinov2_vits14_pretrain.pth --preset ade20k_linear --out labels/
  dinov2-heads segment photos/ --heads parts.pt --checkpoint backbone.pth --out parts/

The heads file is a released DINOv2 segmentation head (*_{ade20k,voc2012}_{linear,ms}_head.pth)
or a file written by save_heads holding a LinearSegmentationHead, such as the heads.pt of
dinov2-heads train (pass --size with the size the store's images had). For each image, OUT gets
NAME.png (a palette PNG of class indices, at the image's size) and NAME_overlay.png; files
already in OUT are refused unless --overwrite. --preset applies the released test settings
(resize, sliding windows, scales, flip) and class names.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from dinov2_heads.dense import SEGMENTATION_PRESETS

    parser = subparsers.add_parser(
        "segment",
        help="label every pixel of images with a segmentation head",
        description="Run a segmentation head on a backbone checkpoint over images and write a "
        "label PNG and a coloured overlay per image.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    _common.add_images_argument(parser)
    parser.add_argument(
        "--heads",
        "--head",
        dest="heads",
        required=True,
        help="a released segmentation head file or a save_heads file (train's heads.pt)",
    )
    _common.add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the label PNGs and overlays")
    parser.add_argument(
        "--preset",
        choices=list(SEGMENTATION_PRESETS),
        help="the released test settings and class names of a head family",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="run at H x W (labels are resized back to each image's size); default: the "
        "preset's test size, else the image's own size",
    )
    _dense.add_window_arguments(parser, preset=True)
    parser.add_argument("--scales", type=float, nargs="+", help="resize ratios to average over")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the labels")
    parser.add_argument(
        "--head-name", help="with a save_heads file of several heads: the segmentation head"
    )
    _dense.add_overwrite_argument(parser)
    _common.add_backbone_check_argument(parser)
    _common.add_on_error_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from dinov2_heads.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        UnreadableImageError,
        load_image,
        normalize,
        to_float,
    )
    from dinov2_heads.data.functional import pil_to_tensor
    from dinov2_heads.dense import Segmenter, get_preset
    from dinov2_heads.viz.segmentation import label_image, overlay_labels, save_image

    preset = get_preset(args.preset) if args.preset else None
    out = _common.check_output_folder(args.out)
    paths = _common.image_paths(args.images)
    suffixes = (".png", "_overlay.png")
    names = _dense.output_names(paths, suffixes)
    _dense.refuse_existing(
        out, [name + suffix for name in names for suffix in suffixes], overwrite=args.overwrite
    )
    backbone = _common.load_backbone(args)
    head, class_names, palette = _load_head(args, backbone, preset)
    device = next(backbone.parameters()).device
    head.to(device).eval()
    settings = _dense.window_settings(args, preset.settings() if preset else None)
    segmenter = Segmenter(backbone, head, **settings).eval()
    _common.make_output_folder(out)
    skipped = 0
    for path, name in zip(paths, names, strict=True):
        try:
            image = load_image(path)
        except UnreadableImageError as error:
            if args.on_error == "raise":
                raise
            logger.warning("skipped %s: %s", path, error.reason)
            skipped += 1
            continue
        pixels = pil_to_tensor(image)
        height, width = pixels.shape[-2:]
        size = _run_size(args, preset, height, width)
        if size != (height, width):
            # A bilinear resize of the float image, which whole grey levels cannot hold.
            x = to_float(pixels)[None]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            x = normalize(x, IMAGENET_MEAN, IMAGENET_STD).to(device)
        else:
            # uint8 pixels: the Segmenter normalises them on its device (ImageNet's mean and
            # std, as above), a quarter of the bytes to copy, the same probabilities.
            x = pixels[None]
        with torch.no_grad():
            probabilities = segmenter(x)
            if size != (height, width):
                # The official evaluation resizes its output back to the original image.
                probabilities = F.interpolate(
                    probabilities, size=(height, width), mode="bilinear", align_corners=False
                )
        labels = probabilities[0].argmax(dim=0).cpu()
        save_image(label_image(labels, palette), out / f"{name}.png")
        overlay = overlay_labels(pixels, labels, palette, alpha=args.alpha)
        save_image(overlay, out / f"{name}_overlay.png")
        counts = torch.bincount(labels.flatten(), minlength=len(class_names))
        top = counts.argsort(descending=True)[:3]
        shares = ", ".join(
            f"{class_names[int(k)]} {100 * int(counts[k]) / labels.numel():.0f}%"
            for k in top
            if counts[k] > 0
        )
        print(f"{path}: {out / (name + '.png')} ({shares})")
    if skipped:
        print(f"skipped {skipped} unreadable image(s), listed in the log")
    return 0


def _run_size(
    args: argparse.Namespace, preset: SegmentationPreset | None, height: int, width: int
) -> tuple[int, int]:
    if args.size is not None:
        return int(args.size[0]), int(args.size[1])
    if preset is not None:
        return preset.test_size(height, width)
    return height, width


def _load_head(
    args: argparse.Namespace, backbone: nn.Module, preset: SegmentationPreset | None
) -> tuple[nn.Module, tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The head, its class names and a palette."""
    from dinov2_heads.checkpoints import load_partial
    from dinov2_heads.checkpoints.folders import find_checkpoint_files, read_checkpoint_files
    from dinov2_heads.checkpoints.head_files import RELEASED_PREFIX, identify_head_file
    from dinov2_heads.checkpoints.unwrap import unwrap_state_dict
    from dinov2_heads.heads import LinearSegmentationHead

    embed_dim = int(getattr(backbone, "embed_dim", 0))
    content = read_checkpoint_files(find_checkpoint_files(args.heads))
    try:
        state = unwrap_state_dict(content, backbone=False).state_dict
    except ValueError:
        state = {}
    released = identify_head_file(state, str(args.heads)) if state else None
    if released is not None:
        layers = released.layers or (preset.layers if preset is not None else 1)
        if released.embed_dim is not None and released.embed_dim != embed_dim:
            raise ValueError(
                f"{args.heads} is a head for D = {released.embed_dim} but the backbone has "
                f"D = {embed_dim}; use the matching backbone checkpoint"
            )
        classes = released.num_classes
        assert classes is not None  # a segmentation head file always gives K
        head = LinearSegmentationHead(embed_dim, classes, layers=layers)
        load_partial(head, state, rename={RELEASED_PREFIX: ""}, strict=True)
        labels = preset.labels if preset is not None else _label_set(classes)
        if labels is not None and labels.num_classes == classes:
            return head, labels.class_names, labels.palette
        return head, _numbered(classes), _palette(classes)
    return _saved_head(args, backbone)


def _saved_head(
    args: argparse.Namespace, backbone: nn.Module
) -> tuple[nn.Module, tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The one segmentation head of a save_heads file, checked against the backbone."""

    from dinov2_heads.export import load_heads

    saved = load_heads(args.heads)
    _common.check_backbone(args, saved, backbone)
    heads = saved.heads
    if heads is None:
        raise ValueError(
            f"{args.heads} holds heads this library cannot rebuild; load them in Python with "
            "load_heads(...).load_into(your_module)"
        )
    _, head = pick_dense_head(heads, args.heads, args.head_name, "segmentation")
    classes = int(getattr(head, "num_classes"))  # noqa: B009
    names = getattr(head, "class_names", None) or _numbered(classes)
    return head, tuple(names), _palette(classes)


def _label_set(num_classes: int) -> Any:
    from dinov2_heads.dense import ADE20K, VOC2012

    return {150: ADE20K, 21: VOC2012}.get(num_classes)


def _numbered(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class {k}" for k in range(num_classes))


def _palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours: class 0 black, the rest spread around the hue circle."""
    import colorsys

    colours = [(0, 0, 0)]
    for k in range(1, num_classes):
        hue = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)
