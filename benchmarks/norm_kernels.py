"""The Triton LayerNorm kernel of ``dinov2_heads.accel`` against PyTorch, at ViT-S/ViT-L shapes.

For each shape (ViT-S/14 batch 256 and ViT-L/14 batch 128 at 224x224, bf16) times, as medians
of CUDA-event timings: PyTorch's ``F.layer_norm``, ``torch.addcmul`` (LayerScale + residual),
the two in sequence, and the Triton kernels that replace them, for a few launch configurations
(elements per program, warps). Prints a table of microseconds and achieved GB/s (bytes read
and written once)::

    python benchmarks/norm_kernels.py
    python benchmarks/norm_kernels.py --json

``--smoke`` runs the same code on CPU with tiny shapes through Triton's interpreter when Triton
is installed, or PyTorch's operations alone otherwise (the test suite does this).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.accel import norm_kernels

#: (name, rows, width): the tokens of one batch through one block.
SHAPES = [("ViT-S/14 b256", 256 * 257, 384), ("ViT-L/14 b128", 128 * 257, 1024)]
#: Launch configurations of the Triton kernels: (elements per program, warps).
CONFIGS = [(8192, 8), (4096, 4), (2048, 4), (16384, 8)]


def time_us(function: Callable[[], Any], device: torch.device, iters: int) -> float:
    """Median microseconds of ``function`` (CUDA events on a GPU, wall clock on CPU)."""
    function()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3)
        else:
            begin = time.perf_counter()
            function()
            samples.append((time.perf_counter() - begin) * 1e6)
    return statistics.median(samples)


def run_shape(
    name: str, rows: int, width: int, *, device: torch.device, dtype: torch.dtype, iters: int
) -> list[dict[str, Any]]:
    """Every operation on one shape; one row per (operation, configuration)."""
    torch.manual_seed(0)
    x = torch.randn(rows, width, device=device, dtype=dtype)
    branch = torch.randn(rows, width, device=device, dtype=dtype)
    gamma = torch.rand(width, device=device, dtype=dtype)
    norm = nn.LayerNorm(width, eps=1e-6).to(device=device, dtype=dtype)
    unit = x.numel() * x.element_size()
    cases: list[tuple[str, str, int, Callable[[], Any]]] = [
        ("layer_norm", "pytorch", 2 * unit, lambda: norm(x)),
        ("add_scaled", "pytorch", 3 * unit, lambda: torch.addcmul(x, branch, gamma)),
        (
            "add_scaled_layer_norm",
            "pytorch",
            4 * unit,
            lambda: norm(torch.addcmul(x, branch, gamma)),
        ),
    ]
    if norm_kernels.kernels_available(x):
        for elements, warps in CONFIGS:
            config = f"triton {elements}/{warps}"
            launch = _launcher(elements, warps)
            cases += [
                ("layer_norm", config, 2 * unit, partial(launch, x, None, None, norm)),
                ("add_scaled", config, 3 * unit, partial(launch, x, branch, gamma, None)),
                (
                    "add_scaled_layer_norm",
                    config,
                    4 * unit,
                    partial(launch, x, branch, gamma, norm),
                ),
            ]
    out = []
    for operation, implementation, moved, function in cases:
        us = time_us(function, device, iters)
        out.append(
            {
                "shape": name,
                "operation": operation,
                "implementation": implementation,
                "us": us,
                "gb_per_s": moved / us / 1e3,
            }
        )
    return out


def _launcher(elements: int, warps: int) -> Callable[..., Any]:
    def launch(x: Tensor, branch: Tensor | None, gamma: Tensor | None, norm: Any) -> Any:
        return norm_kernels.launch(x, branch, gamma, norm, block_elements=elements, num_warps=warps)

    return launch


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table; ``x pytorch`` is PyTorch's time over this row's for the same operation."""
    pytorch = {
        (r["shape"], r["operation"]): r["us"] for r in rows if r["implementation"] == "pytorch"
    }
    lines = [
        "| shape | operation | implementation | us | GB/s | x pytorch |",
        "|" + " --- |" * 6,
    ]
    for r in rows:
        ratio = pytorch[(r["shape"], r["operation"])] / r["us"]
        lines.append(
            f"| {r['shape']} | {r['operation']} | {r['implementation']} | {r['us']:.1f} "
            f"| {r['gb_per_s']:,.0f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per case")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Time every case; returns what ``--json`` prints."""
    args = build_parser().parse_args(argv)
    if args.smoke:
        device, dtype, iters = torch.device("cpu"), torch.float32, 1
        shapes = [("tiny", 10, 48)]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; run with --smoke for the CPU dry run")
        device, dtype, iters = torch.device("cuda"), torch.bfloat16, args.iters
        shapes = SHAPES
    rows = []
    for name, n, width in shapes:
        rows += run_shape(name, n, width, device=device, dtype=dtype, iters=iters)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
