"""What watching the data loading costs an extraction: the stall watchdog, and the first sample.

Two figures, each the median of ``--runs``:

- ``watchdog``: a loop over ``--items`` items, bare and through ``StallWatchdog.watch`` with its
  thread running (threshold 300 s, as ``extract_features`` has it). The difference per item is
  what each batch of an extraction pays (two clock readings and an uncontended lock);
- ``first sample``: ``first_sample_bytes`` (one ``DataLoader`` worker process started, sample
  0 read there, its size handed back, the worker stopped), which ``extract_features`` runs
  once before starting workers where ``/dev/shm`` is checked, against reading sample 0 in this
  process, as it was read before.

Run on CPU::

    python benchmarks/loader_watch.py
    python benchmarks/loader_watch.py --items 100000 --runs 5 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from dinov2_heads.cache.loader_settings import first_sample_bytes
from dinov2_heads.watchdog import STALL_WARNING, Stall, StallWatchdog


class Images(Dataset[Any]):
    """Random float32 images (3, size, size) with an int label, made when read."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, self.size, self.size, generator=generator), index % 3


def _describe(stall: Stall) -> str:
    return f"stalled for {stall.elapsed:.0f} s"


def bare(items: int) -> float:
    start = time.perf_counter()
    for _ in range(items):
        pass
    return time.perf_counter() - start


def watched(items: int) -> float:
    with StallWatchdog(STALL_WARNING, _describe) as watchdog:
        start = time.perf_counter()
        for _ in watchdog.watch(range(items)):
            pass
        return time.perf_counter() - start


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    seconds = [measure() for _ in range(runs)]
    return statistics.median(seconds), seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both, and return the results as plain data."""
    bare_s, bare_runs = median_of(args.runs, lambda: bare(args.items))
    watched_s, watched_runs = median_of(args.runs, lambda: watched(args.items))
    dataset = Images(8, args.size)

    def in_process() -> float:
        start = time.perf_counter()
        dataset[0]
        return time.perf_counter() - start

    def in_a_worker() -> float:
        start = time.perf_counter()
        first_sample_bytes(dataset)
        return time.perf_counter() - start

    process_s, process_runs = median_of(args.runs, in_process)
    worker_s, worker_runs = median_of(args.runs, in_a_worker)
    return {
        "config": {
            "items": args.items,
            "runs": args.runs,
            "size": args.size,
            "start_method": multiprocessing.get_start_method(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "rows": [
            {"what": "loop, bare", "median_s": bare_s, "seconds": bare_runs},
            {"what": "loop, watched", "median_s": watched_s, "seconds": watched_runs},
            {"what": "sample 0 in this process", "median_s": process_s, "seconds": process_runs},
            {"what": "sample 0 in a worker", "median_s": worker_s, "seconds": worker_runs},
        ],
        "watchdog_us_per_item": (watched_s - bare_s) / args.items * 1e6,
        "first_sample_extra_ms": (worker_s - process_s) * 1e3,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    config = result["config"]
    lines = [
        f"{config['items']} loop items; first sample (3, {config['size']}, {config['size']}) "
        f"float32; start method {config['start_method']}; median of {config['runs']}",
        "",
        f"{'what':<26} {'seconds':>10}",
    ]
    for row in result["rows"]:
        lines.append(f"{row['what']:<26} {row['median_s']:>10.5f}")
    lines += [
        "",
        f"watchdog: {result['watchdog_us_per_item']:.2f} us per batch; first sample in a worker: "
        f"{result['first_sample_extra_ms']:.0f} ms more, once per extraction",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="loop items to time")
    parser.add_argument("--size", type=int, default=224, help="side of the first sample")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
