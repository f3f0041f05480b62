"""Sliding-window segmentation: crops batched through the backbone against one crop at a time.

mmsegmentation's ``slide_inference`` (the official evaluation loop) runs the backbone once per
crop. ``Segmenter`` stacks the crops (and, with ``--flip``, the mirror image's crops) into one
batch. This times both on the same backbone, head and images, counts the backbone calls, and
checks that they give the same probabilities.

Run on CPU (ViT-S/14 with 12 blocks, a 512x1024 image, the ADE20K crop 512 / stride 341)::

    python benchmarks/dense_slide.py

On a GPU, bf16 weights, with the flip of the "ms" heads::

    python benchmarks/dense_slide.py --device cuda --dtype bf16 --flip --batch-size 4

Rows: ``one crop at a time`` is ``crops_per_call=1`` (the official loop, one backbone call per
window), ``batched crops`` is the default (all windows of a view in one call). Each time is the
median of ``--iters`` runs after ``--warmup`` untimed ones, synchronised on a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants
from dinov2_heads.dense import Segmenter, sliding_windows
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead

# The benchmarks folder is not a package: its scripts import each other from this folder.
sys.path.append(str(Path(__file__).resolve().parent))
heads_script = importlib.import_module("heads")
DTYPES = heads_script.DTYPES
parse_size = heads_script.parse_size

SMOKE = ["--depth", "1", "--size", "60x100", "--crop", "42", "--stride", "28", "--iters", "1",
         "--warmup", "0", "--classes", "5"]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both ways of running the windows; return the results as plain data."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = {"depth": args.depth} if args.depth else {}
    backbone = create_backbone(args.variant, device=device, **overrides)
    head = LinearSegmentationHead(backbone.embed_dim, args.classes, layers=args.layers)
    frozen = FrozenBackbone.for_heads(backbone, head, dtype=DTYPES[args.dtype])
    head.to(device).eval()
    calls = [0]
    frozen.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    height, width = args.size
    images = torch.randn(args.batch_size, 3, height, width, device=device)
    windows = len(sliding_windows(height, width, (args.crop, args.crop), (args.stride,) * 2))

    def segmenter(per_call: int | None) -> Segmenter:
        return Segmenter(
            frozen, head, mode="slide", crop_size=args.crop, stride=args.stride, flip=args.flip,
            crops_per_call=per_call,
        ).eval()  # fmt: skip

    outputs = {}
    rows = []
    for name, per_call in (("one crop at a time", 1), ("batched crops", None)):
        model = segmenter(per_call)

        def step(model: Segmenter = model) -> torch.Tensor:
            with torch.no_grad():
                return model(images)

        for _ in range(args.warmup):
            step()
        seconds = []
        for _ in range(args.iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            calls[0] = 0
            start = time.perf_counter()
            outputs[name] = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        rows.append(
            {
                "name": name,
                "median_ms": 1000 * median,
                "images_per_s": args.batch_size / median,
                "backbone_calls": calls[0],
            }
        )
    for row in rows:
        row["speedup"] = rows[0]["median_ms"] / row["median_ms"]
    difference = (outputs["one crop at a time"] - outputs["batched crops"]).abs().max()
    return {
        "config": {
            "variant": args.variant,
            "depth": len(backbone.blocks),
            "size": [height, width],
            "crop": args.crop,
            "stride": args.stride,
            "windows": windows,
            "flip": args.flip,
            "batch_size": args.batch_size,
            "classes": args.classes,
            "layers": args.layers,
            "dtype": args.dtype,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "torch": torch.__version__,
        },
        "max_abs_difference": float(difference),
        "results": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    c = result["config"]
    lines = [
        f"{c['variant']} depth {c['depth']}, {c['batch_size']} image(s) of "
        f"{c['size'][0]}x{c['size'][1]}, crop {c['crop']} stride {c['stride']} "
        f"({c['windows']} windows{', flip' if c['flip'] else ''}), {c['dtype']} on "
        f"{c['device']} ({c['threads']} threads), median of {c['iters']}",
        "",
        f"{'windows':<20} {'ms/batch':>10} {'images/s':>9} {'backbone calls':>15} {'speed-up':>9}",
    ]
    for row in result["results"]:
        lines.append(
            f"{row['name']:<20} {row['median_ms']:>10.1f} {row['images_per_s']:>9.2f} "
            f"{row['backbone_calls']:>15} {row['speedup']:>8.2f}x"
        )
    lines.append(f"\nlargest probability difference: {result['max_abs_difference']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dinov2_vits14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks (default: all)")
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="H or HxW")
    parser.add_argument("--crop", type=int, default=512, help="window side")
    parser.add_argument("--stride", type=int, default=341, help="window step")
    parser.add_argument("--flip", action="store_true", help="also the mirror image")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--layers", type=int, default=1, help="blocks the head reads")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="backbone storage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--smoke", action="store_true", help="a tiny setting, for the tests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([*SMOKE, *raw] if "--smoke" in raw else raw)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
