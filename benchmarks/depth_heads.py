"""Depth inference speed per head type: images/s of a ``Depther`` with each official head.

Each row runs a :class:`~dinov2_heads.dense.Depther` end to end (centre padding, the frozen
backbone extracting the head's blocks, the head, the clamp and the resize to the input size)
on the same images, and reports images per second and milliseconds per batch; the head-only
column is the head's forward on features computed beforehand, so the backbone's share shows.

Run on CPU (ViT-S/14, 224x224, batch 4)::

    python benchmarks/depth_heads.py

NYU-sized inputs on a GPU, bf16 backbone weights, with the official flip::

    python benchmarks/depth_heads.py --variant dinov2_vitl14 --size 480x640 --batch-size 8 \\
        --device cuda --dtype bf16 --flip

Each figure is the median of ``--iters`` timed runs after ``--warmup`` untimed ones, with a
device synchronisation after each. The heads have random weights (speed does not depend on
them) at the released sizes: linear (last block), linear4 and DPT (256 channels).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants
from dinov2_heads.dense import Depther, center_pad
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead

# The benchmarks folder is not a package: its scripts import each other from this folder.
sys.path.append(str(Path(__file__).resolve().parent))
heads_benchmark = importlib.import_module("heads")

HEAD_TYPES = ("linear", "linear4", "dpt")


def build_head(kind: str, embed_dim: int, channels: int) -> nn.Module:
    if kind == "dpt":
        return DPTDepthHead(embed_dim, channels=channels)
    return LinearDepthHead(embed_dim, layers=4 if kind == "linear4" else 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the backbone and heads, time them, and return the results as plain data."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = {"depth": args.depth} if args.depth else {}
    backbone = create_backbone(args.variant, device=device, **overrides)
    depth = len(backbone.blocks)
    height, width = args.size
    images = torch.randn(args.batch_size, 3, height, width, device=device)
    dtype = heads_benchmark.DTYPES[args.dtype]
    settings: dict[str, Any] = {"flip": args.flip}
    if args.crop is not None:
        settings.update(mode="slide", crop_size=args.crop, stride=args.stride or args.crop)
    rows = []
    for kind in args.heads:
        head = build_head(kind, backbone.embed_dim, args.channels).to(device).eval()
        frozen = FrozenBackbone.for_heads(backbone, head, dtype=dtype)
        depther = Depther(frozen, head, **settings).eval()
        with torch.no_grad():
            seconds = heads_benchmark.time_runs(
                lambda d=depther: d(images), device, args.warmup, args.iters
            )
            features = frozen(center_pad(images, frozen.patch_size))
            head_seconds = heads_benchmark.time_runs(
                lambda h=head, f=features: h(f), device, args.warmup, args.iters
            )
        median = statistics.median(seconds)
        rows.append(
            {
                "name": kind,
                "blocks": [index for index, _ in frozen.blocks],
                "images_per_s": args.batch_size / median,
                "median_ms": 1000 * median,
                "head_ms": 1000 * statistics.median(head_seconds),
                "head_parameters": sum(p.numel() for p in head.parameters()),
            }
        )
    return {
        "config": {
            "variant": args.variant,
            "depth": depth,
            "size": [height, width],
            "batch_size": args.batch_size,
            "mode": "slide" if args.crop is not None else "whole",
            "crop": list(args.crop) if args.crop is not None else None,
            "flip": args.flip,
            "dtype": args.dtype,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "torch": torch.__version__,
        },
        "results": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    config = result["config"]
    mode = config["mode"] + (f" {config['crop'][0]}x{config['crop'][1]}" if config["crop"] else "")
    lines = [
        f"{config['variant']} depth {config['depth']}, {config['size'][0]}x{config['size'][1]}, "
        f"batch {config['batch_size']}, {mode}{', flip' if config['flip'] else ''}, "
        f"{config['dtype']} on {config['device']} ({config['threads']} threads), "
        f"median of {config['iters']}",
        "",
        f"{'head':<8} {'blocks':<16} {'images/s':>9} {'ms/batch':>9} {'head ms':>8} {'params':>11}",
    ]
    for row in result["results"]:
        blocks = ",".join(str(b) for b in row["blocks"])
        lines.append(
            f"{row['name']:<8} {blocks:<16} {row['images_per_s']:>9.2f} {row['median_ms']:>9.1f} "
            f"{row['head_ms']:>8.1f} {row['head_parameters']:>11,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dinov2_vits14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks (default: all)")
    parser.add_argument(
        "--size", type=heads_benchmark.parse_size, default=(224, 224), help="H or HxW"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--heads", nargs="+", choices=HEAD_TYPES, default=list(HEAD_TYPES))
    parser.add_argument("--channels", type=int, default=256, help="DPT fusion width")
    parser.add_argument("--crop", type=heads_benchmark.parse_size, help="slide with this crop")
    parser.add_argument("--stride", type=heads_benchmark.parse_size, help="slide stride")
    parser.add_argument("--flip", action="store_true", help="average with the mirror")
    parser.add_argument(
        "--dtype", choices=list(heads_benchmark.DTYPES), default="fp32", help="backbone storage"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
