"""Dense data loading: image + mask / image + depth batches as float32 against uint8 pixels.

A ``DataLoader`` over a ``SegmentationDataset`` (JPEG images with PNG part masks) or a
``DepthDataset`` (PNG images with 16-bit PNG depth maps) of synthetic street scenes, read in two
ways that differ only in the transform's last step:

- ``float32``: ``SegmentationTransform()`` / ``DepthTransform.evaluation()``: the workers
  normalise and hand on float32 images (what every dense dataset did before);
- ``uint8``: the same with ``normalize=False``: the workers hand on the decoded ``uint8``
  pixels, and the ``FrozenBackbone`` (or ``Segmenter`` / ``Depther``) normalises them on its
  device.

Each run reads every image once both ways, one after the other (the order alternating from run
to run); a figure is the median over ``--runs`` runs after ``--warmup`` untimed ones, and each
ratio is the median of the per-run ratios, so both hand-offs of a ratio ran side by side.
Reported per batch: the bytes of the images (what crosses the worker's shared memory, the
pinned-memory copy and the copy to the GPU) and of the whole batch (labels included, the same
both ways); the loader's images/s; and, for ``uint8``, the main-process time to normalise one
batch on the CPU (``normalise ms``), the work that moves out of the workers (on a GPU it runs on
the GPU). The first batch of both ways is compared: the ``uint8`` batch normalised equals the
float32 batch bit for bit (``same``). ``--crop`` adds a random crop and flip (train-time, no
colour jitter) to both ways, with the same seed.

Run on CPU (the default setting: 480x640 images, NYU's size)::

    python benchmarks/dense_loader.py
    python benchmarks/dense_loader.py --task depth --workers 1 --runs 5 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dinov2_heads.data import (
    DepthDataset,
    DepthTransform,
    SegmentationDataset,
    SegmentationTransform,
    normalize,
)
from dinov2_heads.demo import SyntheticDepthPairs, SyntheticVehicles

HANDOFFS = ("float32", "uint8")
TASKS = ("segmentation", "depth")

SMOKE = ["--size", "28", "42", "--images", "4", "--batch-size", "2", "--runs", "2",
         "--warmup", "0", "--workers", "0", "1"]  # fmt: skip


def write_data(args: argparse.Namespace, root: Path) -> dict[str, Path]:
    """Image + mask and image + depth folders of ``args.images`` synthetic scenes."""
    height, width = args.size
    vehicles = SyntheticVehicles(args.images, seed=0, size=(height, width))
    parts = vehicles.write_parts(root / "parts", image_format="jpg")
    scenes = SyntheticDepthPairs(vehicles, fog=6.0).write_folders(root / "scenes", scale="kitti")
    return {"parts": parts, "scenes": scenes}


def dataset(task: str, folders: dict[str, Path], handoff: str, crop: Any) -> Any:
    """The dense dataset of ``task`` whose transform hands on ``handoff`` images."""
    pixels = handoff == "uint8"
    if task == "segmentation":
        flip = 0.5 if crop else 0.0
        transform = SegmentationTransform(crop_size=crop, flip=flip, seed=0, normalize=not pixels)
        parts = folders["parts"]
        return SegmentationDataset.from_folders(parts / "images", parts / "masks", transform)
    still = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    depth_transform = DepthTransform(
        crop_size=crop, flip=0.5 if crop else 0.0, seed=0, normalize=not pixels, **still
    )
    scenes = folders["scenes"]
    return DepthDataset.from_folders(
        scenes / "images", scenes / "depth", scale="kitti", transform=depth_transform
    )


def read_all(data: Any, args: argparse.Namespace, workers: int) -> tuple[float, list[Any]]:
    """Seconds to read every batch (worker start-up included), and the first batch."""
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=workers, shuffle=False)
    first: list[Any] = []
    start = time.perf_counter()
    for batch in loader:
        if not first:
            first.append(batch)
    return time.perf_counter() - start, first


def normalise_ms(images: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of normalising one ``uint8`` batch in this process (CPU)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        normalize(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(task: str, folders: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per worker count: both hand-offs, their medians and ratios."""
    crop = tuple(args.crop) if args.crop else None
    rows = []
    for workers in args.workers:
        seconds: dict[str, list[float]] = {handoff: [] for handoff in HANDOFFS}
        first: dict[str, Any] = {}
        for index in range(args.warmup + args.runs):
            order = HANDOFFS if index % 2 == 0 else HANDOFFS[::-1]
            for handoff in order:
                # A fresh dataset (and seeded transform) per read, outside the timing: both
                # ways draw the same crops and flips.
                data = dataset(task, folders, handoff, crop)
                taken, batch = read_all(data, args, workers)
                first[handoff] = batch[0]
                if index >= args.warmup:
                    seconds[handoff].append(taken)
        floats, pixels = first["float32"], first["uint8"]
        count = args.images
        rates = {h: [count / s for s in seconds[h]] for h in HANDOFFS}
        ratios = [u / f for u, f in zip(rates["uint8"], rates["float32"], strict=True)]
        row: dict[str, Any] = {"task": task, "workers": workers}
        for handoff, batch in (("float32", floats), ("uint8", pixels)):
            images, labels = batch
            row[handoff] = {
                "image_bytes_per_batch": images.nbytes,
                "batch_bytes": images.nbytes + labels.nbytes,
                "images_per_s": statistics.median(rates[handoff]),
                "rates": rates[handoff],
            }
        row["uint8"]["normalise_ms_per_batch"] = normalise_ms(pixels[0], max(args.runs, 3))
        row["ratio_images_per_s"] = statistics.median(ratios)
        row["ratio_image_bytes"] = pixels[0].nbytes / floats[0].nbytes
        row["same"] = bool(
            torch.equal(normalize(pixels[0]), floats[0]) and torch.equal(pixels[1], floats[1])
        )
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the data, time the loaders, and return the results as plain data."""
    tasks = TASKS if args.task == "both" else (args.task,)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folders = write_data(args, Path(folder))
        rows = [row for task in tasks for row in measure(task, folders, args)]
    return {
        "environment": {
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
        },
        "config": {
            "size": list(args.size),
            "images": args.images,
            "batch_size": args.batch_size,
            "crop": list(args.crop) if args.crop else None,
            "runs": args.runs,
            "warmup": args.warmup,
        },
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    config = result["config"]
    size = "x".join(str(side) for side in config["size"])
    crop = f", random crop {'x'.join(map(str, config['crop']))} + flip" if config["crop"] else ""
    lines = [
        f"{config['images']} images of {size} (H x W){crop}, batch {config['batch_size']}, "
        f"median of {config['runs']} runs, {result['environment']['cpus_available']} CPUs",
        "",
        "| task | workers | image KiB/batch (float32 / uint8) | batch KiB (float32 / uint8) "
        "| loader images/s (float32 / uint8) | uint8 / float32 | normalise ms/batch | same |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        f, u = row["float32"], row["uint8"]
        images = f["image_bytes_per_batch"] / 1024, u["image_bytes_per_batch"] / 1024
        lines.append(
            f"| {row['task']} | {row['workers']} | {images[0]:,.0f} / {images[1]:,.0f} "
            f"| {f['batch_bytes'] / 1024:,.0f} / {u['batch_bytes'] / 1024:,.0f} "
            f"| {f['images_per_s']:.1f} / {u['images_per_s']:.1f} "
            f"| {row['ratio_images_per_s']:.2f} | {u['normalise_ms_per_batch']:.2f} "
            f"| {row['same']} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=(*TASKS, "both"), default="both")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(480, 640))
    parser.add_argument("--images", type=int, default=64, help="images per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1], help="DataLoader worker counts"
    )
    parser.add_argument(
        "--crop", type=int, nargs=2, metavar=("H", "W"), help="random crop and flip (train-time)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed reads per hand-off")
    parser.add_argument("--warmup", type=int, default=1, help="untimed reads per hand-off")
    parser.add_argument("--dir", default=None, help="where to write the images (a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--smoke", action="store_true", help="a tiny setting, for the tests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    given = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser()
    args = parser.parse_args(given)
    if args.smoke:
        # The options given after the smoke setting, so that they win.
        args = parser.parse_args([*SMOKE, *given])
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images < args.batch_size:
        raise SystemExit(f"--images {args.images} must be at least --batch-size {args.batch_size}")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
