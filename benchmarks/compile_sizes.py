"""Compilations of ``FrozenBackbone(compile=True)`` over a stream of batch and image sizes.

Feeds a compiled frozen backbone a sequence of (batch, height, width) inputs, as a data loader
with mixed sizes would, and prints for each call its wall time, how many graphs have been
compiled so far, and the largest difference from the eager features. The library compiles the
first size as is and the first other size as one graph with dynamic batch, height and width, so
the graph count should stop at two (three when a batch of one appears, which torch specialises).

Run it (the default inductor backend builds C++ on CPU, tens of seconds per compilation)::

    python benchmarks/compile_sizes.py
    python benchmarks/compile_sizes.py --backend eager --json   # graph capture only, seconds

"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch._dynamo.utils import counters

from dinov2_heads import FrozenBackbone, create_backbone

#: (batch, height, width): a first size, more batches of it, then other sizes and a batch of one.
DEFAULT_CALLS = [
    (4, 224, 224),
    (3, 224, 224),
    (4, 126, 252),
    (4, 252, 126),
    (2, 518, 518),
    (1, 224, 224),
    (4, 98, 196),
    (4, 224, 224),
]


def parse_call(text: str) -> tuple[int, int, int]:
    """``"4x126x252"`` -> (4, 126, 252): batch x height x width."""
    try:
        batch, height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected BxHxW such as 4x126x252, got {text!r}"
        ) from None
    return batch, height, width


def run(
    calls: Sequence[tuple[int, int, int]],
    *,
    variant: str,
    depth: int | None,
    backend: str,
    device: torch.device,
) -> list[dict[str, Any]]:
    """One row per call: sizes, seconds, graphs compiled so far, max |compiled - eager|."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    overrides = {"depth": depth} if depth else {}
    backbone = create_backbone(variant, device=device, **overrides)
    eager = FrozenBackbone(backbone)
    compiled = FrozenBackbone(backbone, compile={"backend": backend})
    rows = []
    for batch, height, width in calls:
        images = torch.randn(batch, 3, height, width, device=device)
        start = time.perf_counter()
        got = compiled(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        expected = eager(images)
        difference = max(
            float((got.class_token - expected.class_token).abs().max()),
            float((got.patch_mean - expected.patch_mean).abs().max()),
        )
        rows.append(
            {
                "batch": batch,
                "height": height,
                "width": width,
                "seconds": seconds,
                "graphs": int(counters["stats"]["unique_graphs"]),
                "max_abs_diff": difference,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    lines = ["| call | batch | size | seconds | graphs so far | max abs diff |", "|" + " --- |" * 6]
    for index, row in enumerate(rows, start=1):
        lines.append(
            f"| {index} | {row['batch']} | {row['height']}x{row['width']} "
            f"| {row['seconds']:.2f} | {row['graphs']} | {row['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="dinov2_vits14")
    parser.add_argument("--depth", type=int, help="fewer blocks, for a quicker run")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--calls", nargs="+", type=parse_call, metavar="BxHxW", help="the inputs, in order"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the calls; returns the rows ``--json`` prints."""
    args = build_parser().parse_args(argv)
    rows = run(
        args.calls or DEFAULT_CALLS,
        variant=args.variant,
        depth=args.depth,
        backend=args.backend,
        device=torch.device(args.device),
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"# torch.compile ({args.backend}) of {args.variant} over {len(rows)} calls\n")
        print(format_table(rows))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
