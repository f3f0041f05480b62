"""Finding unreadable images (``on_error="skip"``): a full decode of every file against the check.

Writes ``--photos`` synthetic camera photos (JPEG, ``--size``, the generator of
``input_pipeline.py``) plus ``--broken`` truncated copies, then times, alternating within each
run:

- ``full decode``: ``load_image(path)`` on every file, catching ``UnreadableImageError``:
  what ``check_images`` and the datasets' ``on_error="skip"`` did before;
- ``check_images``: ``check_images(paths, on_error="skip")``, which decodes JPEG files at 1/8
  of each side (libjpeg still reads all of their compressed data);
- ``dataset``: building ``ImageFolderDataset(folder, on_error="skip")`` (listing the folder
  and the same check).

Each figure is the median of ``--runs``; the ratio is full decode / check_images, both medians
of the same run. Both must skip the same files (checked and reported). The files stay in the
page cache, as a data set's do after its first pass.

Run on CPU::

    python benchmarks/check_images.py
    python benchmarks/check_images.py --photos 8 --size 1600x1200 --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL

from dinov2_heads.data import ImageFolderDataset, UnreadableImageError, check_images, load_image

# The benchmarks folder is not a package: its scripts import each other from this folder.
sys.path.append(str(Path(__file__).resolve().parent))
input_pipeline = importlib.import_module("input_pipeline")

MODES = ("full decode", "check_images", "dataset")


def full_decode(paths: list[Path]) -> set[Path]:
    """The files a decode at full size cannot read."""
    bad = set()
    for path in paths:
        try:
            load_image(path)
        except UnreadableImageError:
            bad.add(path)
    return bad


def checked(paths: list[Path]) -> set[Path]:
    """The files ``check_images`` skips."""
    _, skipped = check_images(paths, on_error="skip")
    return {record.path for record in skipped}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the photos, time the three ways, and return the results as plain data."""
    width, height = args.size
    # The skipped files are logged as warnings once per pass: keep the output to the table.
    library = logging.getLogger("dinov2_heads")
    level = library.level
    library.setLevel(logging.ERROR)
    try:
        return _run(args, width, height)
    finally:
        library.setLevel(level)


def _run(args: argparse.Namespace, width: int, height: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        root = Path(folder)
        paths = input_pipeline.write_photos(
            root, (width, height), args.photos, min(args.distinct, args.photos)
        )
        for index in range(args.broken):
            data = paths[index].read_bytes()
            broken = paths[0].parent / f"broken-{index}.jpg"
            broken.write_bytes(data[: len(data) * (index + 1) // (args.broken + 1)])
            paths.append(broken)
        file_bytes = sum(path.stat().st_size for path in paths)
        ways: dict[str, Callable[[], set[Path]]] = {
            "full decode": lambda: full_decode(paths),
            "check_images": lambda: checked(paths),
            "dataset": lambda: {
                record.path for record in ImageFolderDataset(root, on_error="skip").skipped
            },
        }
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        found: dict[str, set[Path]] = {}
        for index in range(args.warmup + args.runs):
            order = MODES if index % 2 == 0 else MODES[::-1]
            for mode in order:
                start = time.perf_counter()
                found[mode] = ways[mode]()
                taken = time.perf_counter() - start
                if index >= args.warmup:
                    seconds[mode].append(taken)
        same = found["full decode"] == found["check_images"] == found["dataset"]
        skipped = sorted(path.name for path in found["full decode"])
    rows = [
        {
            "mode": mode,
            "median_s": statistics.median(seconds[mode]),
            "files_per_s": len(paths) / statistics.median(seconds[mode]),
            "seconds": seconds[mode],
        }
        for mode in MODES
    ]
    return {
        "config": {
            "photos": args.photos,
            "broken": args.broken,
            "size": [width, height],
            "mean_file_kb": file_bytes / len(paths) / 1024,
            "runs": args.runs,
            "warmup": args.warmup,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
        "rows": rows,
        "ratio_full_over_check": rows[0]["median_s"] / rows[1]["median_s"],
        "same_files_skipped": same,
        "skipped": skipped,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    config = result["config"]
    width, height = config["size"]
    lines = [
        f"{config['photos']} JPEG photos of {width}x{height} ({config['mean_file_kb']:.0f} KB "
        f"on average) + {config['broken']} truncated, page cache warm, median of "
        f"{config['runs']}",
        "",
        f"{'way':<13} {'seconds':>9} {'files/s':>9}",
    ]
    for row in result["rows"]:
        lines.append(f"{row['mode']:<13} {row['median_s']:>9.3f} {row['files_per_s']:>9.1f}")
    lines += [
        "",
        f"full decode / check_images: {result['ratio_full_over_check']:.1f}x (same run); "
        f"same files skipped: {result['same_files_skipped']} ({', '.join(result['skipped'])})",
    ]
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """``"4000x3000"`` -> (4000, 3000), width first."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must be WxH, got {text!r}") from error
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--size", type=parse_size, default=(4000, 3000), help="WxH of the photos")
    parser.add_argument("--distinct", type=int, default=4, help="pictures (the rest: copies)")
    parser.add_argument("--broken", type=int, default=2, help="truncated files added")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to write the photos (a temp folder)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
