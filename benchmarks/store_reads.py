"""Reading a feature store for a linear head: every stored part against only the pooled tokens.

Writes a store on disk with the patch tokens kept (by default ViT-S-like: D = 384, a 16x16 patch
grid, 4096 samples, float16: 1.6 KiB of pooled tokens and 192 KiB of patch tokens per sample),
then trains a ``LinearHead`` for one epoch over it (shuffled batches, forward, cross-entropy,
backward, SGD step) in two ways, alternating within each run:

- ``everything``: ``FeatureDataset(store, label=...)``, which reads (and converts to float32)
  every stored array, the patch tokens included: what a reader did before stores read by part;
- ``needed``: ``FeatureDataset(store, label=..., heads=head)``, which reads the class tokens
  and the mean patch token alone (``FeatureStore.parts_for(head)``).

Each figure is the median of ``--runs`` epochs; the ratio is everything / needed, both medians
of the same run. The store stays in the page cache (it was just written, then synced to the
disk), so this measures the reading and the conversion, not the disk; from a cold cache the
patch tokens must also come off the disk, and the gap is larger. The two heads end with equal
weights (checked).

On a machine shared with other work, ``--threads 1`` keeps the figures steady: PyTorch's
threads waiting on each other for busy cores make every step's time jump.

Run on CPU (the default setting)::

    python benchmarks/store_reads.py
    python benchmarks/store_reads.py --samples 2048 --runs 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.features import Features
from dinov2_heads.heads import LinearHead

MODES = ("everything", "needed")


class RandomFeatures(nn.Module):
    """Stands in for a backbone: ``Features`` of random tokens for each image, quickly.

    The images only give the batch size; the tokens are drawn from a generator seeded once,
    so the store is the same on every run.
    """

    def __init__(self, embed_dim: int, grid: int, n_blocks: int, seed: int = 0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.grid = grid
        self.n_blocks = n_blocks
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: Tensor) -> Features:
        batch = images.shape[0]
        tokens = self.grid * self.grid

        def draw(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=self.generator)

        return Features.from_tokens(
            [draw(batch, self.embed_dim) for _ in range(self.n_blocks)],
            [draw(batch, tokens, self.embed_dim) for _ in range(self.n_blocks)],
            (self.grid, self.grid),
        )


def write_store(args: argparse.Namespace, path: Path) -> FeatureStore:
    """A store of ``args.samples`` samples with patch tokens, on disk at ``path``."""
    side = 14 * args.grid
    # The stand-in ignores the pixels: one image, repeated, gives each sample its size.
    images = torch.zeros(1, 3, side, side).expand(args.samples, -1, -1, -1)
    labels = torch.arange(args.samples) % args.classes
    data = torch.utils.data.TensorDataset(images, labels)
    return extract_features(
        RandomFeatures(args.dim, args.grid, args.n_blocks),
        data,
        path=path,
        keep="patch_tokens",
        batch_size=256,
        num_workers=0,
        progress=False,
    )


def epoch(dataset: FeatureDataset, head: LinearHead, args: argparse.Namespace, seed: int) -> float:
    """Seconds of one training epoch of ``head`` over ``dataset``."""
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    loader = dataset.loader(args.batch_size, shuffle=True, drop_last=True, seed=seed)
    start = time.perf_counter()
    for features, labels in loader:
        loss = F.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the store, time the epochs, and return the results as plain data."""
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = write_store(args, Path(folder) / "store")
        # Fresh pages still being written back to the disk stall the reads that touch them:
        # wait for the writeback, so that both modes read a settled page cache.
        os.sync()
        torch.manual_seed(0)
        heads = {mode: LinearHead(args.dim, args.classes, n_blocks=args.n_blocks) for mode in MODES}
        heads["needed"].load_state_dict(heads["everything"].state_dict())
        datasets = {
            "everything": FeatureDataset(store, label="label"),
            "needed": FeatureDataset(store, label="label", heads=heads["needed"]),
        }
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for index in range(args.warmup + args.runs):
            # Alternate the order, so neither mode always runs on the other's cache state.
            order = MODES if index % 2 == 0 else MODES[::-1]
            for mode in order:
                taken = epoch(datasets[mode], heads[mode], args, seed=index)
                if index >= args.warmup:
                    seconds[mode].append(taken)
        same = all(
            torch.equal(a, b)
            for a, b in zip(
                heads["everything"].parameters(), heads["needed"].parameters(), strict=True
            )
        )
        # Token bytes read per sample (the labels, read by both, left out).
        bytes_read = {
            "everything": sum(store.layout.arrays[name].row_bytes for name in store.keep),
            "needed": sum(
                store.layout.arrays[name].row_bytes for name in ("class_tokens", "patch_mean")
            ),
        }
        store_bytes = store.nbytes
    batches = args.samples // args.batch_size
    rows = []
    for mode in MODES:
        median = statistics.median(seconds[mode])
        rows.append(
            {
                "mode": mode,
                "median_s": median,
                "samples_per_s": batches * args.batch_size / median,
                "bytes_per_sample": bytes_read[mode],
                "seconds": seconds[mode],
            }
        )
    return {
        "config": {
            "samples": args.samples,
            "dim": args.dim,
            "grid": [args.grid, args.grid],
            "n_blocks": args.n_blocks,
            "batch_size": args.batch_size,
            "classes": args.classes,
            "runs": args.runs,
            "warmup": args.warmup,
            "store_bytes": store_bytes,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "rows": rows,
        "ratio_everything_over_needed": rows[0]["median_s"] / rows[1]["median_s"],
        "same_weights": same,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    config = result["config"]
    grid = "x".join(str(side) for side in config["grid"])
    lines = [
        f"LinearHead epoch over {config['samples']} samples (D={config['dim']}, grid {grid}, "
        f"n={config['n_blocks']}, float16 store of {config['store_bytes'] / 2**20:.0f} MiB with "
        f"patch tokens, memory-mapped, page cache warm), batch {config['batch_size']}, "
        f"{config['threads']} threads, median of {config['runs']}",
        "",
        f"{'reads':<11} {'epoch s':>9} {'samples/s':>11} {'token KiB/sample':>17}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['mode']:<11} {row['median_s']:>9.3f} {row['samples_per_s']:>11.0f} "
            f"{row['bytes_per_sample'] / 1024:>17.1f}"
        )
    lines += [
        "",
        f"everything / needed: {result['ratio_everything_over_needed']:.1f}x "
        f"(same run); same trained weights: {result['same_weights']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=384, help="D (384: ViT-S)")
    parser.add_argument("--grid", type=int, default=16, help="patch grid side (16: 224x224)")
    parser.add_argument("--n-blocks", type=int, default=1, help="blocks stored and read")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="timed epochs per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per mode")
    parser.add_argument("--dir", default=None, help="where to write the store (a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples < args.batch_size:
        raise SystemExit(
            f"--samples {args.samples} must be at least --batch-size {args.batch_size}"
        )
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
