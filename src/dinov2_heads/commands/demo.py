"""``dinov2-heads demo``: the whole job on built-in synthetic data, in a minute or two."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dinov2_heads.commands import _common

EXAMPLE = """\
example:
  dinov2-heads demo
  dinov2-heads demo --checkpoint dinov2_vits14_pretrain.pth --out demo-vits14
  dinov2-heads demo --seed 1 --num-train 800 --epochs 16 --quiet
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from dinov2_heads.backbone import list_variants

    parser = subparsers.add_parser(
        "demo",
        help="train heads on synthetic vehicles and report their held-out scores",
        description=(
            "Draw a small synthetic vehicles set, extract features once with a frozen DINOv2 "
            "backbone (random weights unless --checkpoint is given), train linear heads for "
            "body, colour and orientation and a Conv1d neck for the brand emblem with some "
            "labels missing, print the held-out accuracy per head, then train a segmentation "
            "head on the vehicles' parts and a depth head on street scenes with depth maps, "
            "print their held-out scores next to a baseline, and write the heads, pictures "
            "and the results under --out.\n\n" + EXAMPLE
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "--checkpoint",
        help="a DINOv2 backbone checkpoint (.pth, .pt, .bin, .safetensors); default: random "
        "weights, which show that the pipeline works but not what DINOv2 can do",
    )
    parser.add_argument(
        "--variant",
        choices=list_variants(),
        help="with --checkpoint: the variant its weights must be; without: the family of the "
        "random backbone (dinov2_vits14 if not given)",
    )
    parser.add_argument(
        "--out", help="folder for the files (default: a new ./dinov2-heads-demo folder)"
    )
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the images and weights")
    parser.add_argument("--num-train", type=_at_least(2), default=400, help="training images")
    parser.add_argument("--num-heldout", type=_at_least(1), default=160, help="held-out images")
    parser.add_argument(
        "--epochs", type=_at_least(1), default=8, help="passes over the cached features"
    )
    parser.add_argument(
        "--parts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train a segmentation head on vehicle parts and report its mIoU",
    )
    parser.add_argument(
        "--depth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train a depth head on street scenes and report AbsRel, RMSE and delta<1.25",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print only the results: no steps, no progress bars",
    )


def run(args: argparse.Namespace) -> int:
    from dinov2_heads.demo.run import run_demo

    started = time.perf_counter()
    quiet = bool(getattr(args, "quiet", False))
    # The demo prints its own account of each step; the library's INFO lines would repeat it.
    with _common.own_account(args):
        results = run_demo(
            args.out,
            checkpoint=args.checkpoint,
            variant=args.variant,
            seed=args.seed,
            num_train=args.num_train,
            num_heldout=args.num_heldout,
            epochs=args.epochs,
            progress=not quiet,
            echo=None if quiet else _say,
        )

    print(f"\nheld-out accuracy ({results.num_heldout} images, every label known):")
    print(results.table())
    if results.random_weights:
        print(
            "(random backbone weights: these numbers show that training works, not what DINOv2 "
            "features can do; --checkpoint gives real ones)"
        )
    backbone = _trained_on(results) if args.parts or args.depth else None
    parts = _parts(args, backbone, results.out, quiet) if args.parts else None
    depth = _depth(args, backbone, results.out, quiet) if args.depth else None
    print(f"\nfiles in {results.out}:")
    described = {
        "heads": "the four trained heads with their class names (dinov2_heads.export.load_heads)",
        "backbone": "the random backbone weights the heads were trained on",
        "pca": "PCA picture of the patch tokens of four held-out images",
        "results": "these numbers, the settings and the timings as JSON",
        "samples": "held-out images (named after their labels) to try predict on",
        "features": "the feature cache: train/ and heldout/ feature stores, to train more heads",
        "data": "the images of the feature stores, with a manifest.csv of labels per store",
    }
    listed = [
        (f"{path.name}/" if path.is_dir() else path.name, described[name])
        for name, path in results.files.items()
    ]
    if parts is not None:
        listed.append((parts.files["overlay"].name, "held-out parts: image, prediction, truth"))
        listed.append((parts.files["results"].name, "the parts scores as JSON"))
        listed.append(
            (parts.files["heads"].name, "the parts head (LinearSegmentationHead), class names")
        )
        listed.append((f"{parts.files['samples'].name}/", "held-out vehicles to try segment on"))
    if depth is not None:
        listed.append(
            (depth.files["prediction"].name, "a held-out scene beside its predicted depth")
        )
        listed.append((depth.files["truth"].name, "the same scene beside its true depth"))
        listed.append((depth.files["results"].name, "the depth metrics as JSON"))
        head = depth.head
        listed.append(
            (
                depth.files["heads"].name,
                f"the depth head (LinearDepthHead), {head.min_depth:g} to {head.max_depth:g} m",
            )
        )
        listed.append((f"{depth.files['samples'].name}/", "held-out scenes to try depth on"))
    width = max(len(label) for label, _ in listed)
    for label, text in listed:
        print(f"  {label:<{width}}  {text}")
    checkpoint = _quote(results.files.get("backbone", results.checkpoint))
    features = results.files["features"]
    print("\ntry next:")
    print(
        f"  dinov2-heads predict --heads {_quote(results.files['heads'])} --checkpoint "
        f"{checkpoint} {_quote(results.files['samples'])}"
    )
    if parts is not None:
        print(_dense_command(parts, checkpoint))
    if depth is not None:
        print(_dense_command(depth, checkpoint))
    print(
        f"  dinov2-heads train {_quote(features / 'train')} --val {_quote(features / 'heldout')} "
        f"--label colour --out {_quote(results.out / 'colour-probe')}"
    )
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


def _quote(path: Any) -> str:
    """A path as the shell reads it back: quoted where it has spaces or other special signs."""
    return shlex.quote(str(path))


def _dense_command(part: Any, checkpoint: str) -> str:
    """The ``segment`` or ``depth`` line that runs a dense part's heads file on its samples: the
    one ``inspect`` shows for the file (at the size the head was trained at, pictures beside
    it), with the samples for ``IMAGES``."""
    from dinov2_heads.export import describe_heads

    summary = dataclasses.replace(describe_heads(part.files["heads"]), checkpoint=checkpoint)
    line = summary.commands()[0]
    return f"  {line.removesuffix('IMAGES')}{_quote(part.files['samples'])}"


def _trained_on(results: Any) -> Any:
    """The backbone the classification heads were trained on, loaded once for the dense parts."""
    from dinov2_heads.checkpoints import load_backbone

    return load_backbone(results.files.get("backbone", results.checkpoint))


def _dense_part(args: argparse.Namespace, quiet: bool, epochs_per_epoch: float) -> dict[str, Any]:
    """The settings of a dense part: half the training images, a quarter of the held-out ones,
    ``epochs_per_epoch`` of its (cheaper) epochs for each classification epoch."""
    return {
        "seed": args.seed,
        "num_train": max(2, args.num_train // 2),
        "num_heldout": max(1, args.num_heldout // 4),
        "epochs": max(2, round(epochs_per_epoch * args.epochs)),
        "progress": not quiet,
        "echo": None if quiet else _say,
    }


def _parts(args: argparse.Namespace, backbone: Any, out: Path, quiet: bool) -> Any:
    """The segmentation part: a LinearSegmentationHead on the same backbone, on part masks."""
    from dinov2_heads.demo.segmentation import run_parts_demo

    parts = run_parts_demo(backbone, out, **_dense_part(args, quiet, 2.5))
    print(
        f"\nvehicle parts, held out ({parts.num_heldout} images): mIoU "
        f"{100 * parts.scores.miou:.1f}% against {100 * parts.chance_miou:.1f}% by chance"
    )
    print(parts.table())
    return parts


def _depth(args: argparse.Namespace, backbone: Any, out: Path, quiet: bool) -> Any:
    """The depth part: a LinearDepthHead on the same backbone, on scenes with depth maps."""
    from dinov2_heads.demo.depth import run_depth_demo

    depth = run_depth_demo(backbone, out, **_dense_part(args, quiet, 6.25))
    print(f"\ndepth, held out ({depth.num_heldout} scenes, metres):")
    print(depth.table())
    return depth


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``least`` (a usage error names the option otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def _seed(text: str) -> int:
    """An argparse type: a 64-bit signed int, the range torch's generators take."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a 64-bit signed int, got {value}")
    return value


def _say(line: str) -> None:
    print(line, flush=True)
    sys.stderr.flush()
