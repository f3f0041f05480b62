"""Where the uncompiled GPU forward pass spends its time: GPU time per kernel family.

Profiles ``forward_features`` of ViT-S/14 (batch 256) and ViT-L/14 (batch 128) at 224x224 with
random weights, for chosen candidates of ``benchmarks/eager_speedups.py`` (by default ``bf16``:
bf16 weights, accelerated as ``FrozenBackbone`` runs the model on a GPU), and prints, per case,
the GPU time of each kind of kernel (matrix products, attention, LayerNorm, GELU, other
elementwise, copies) per forward pass, with its share of the total::

    python benchmarks/profile_forward.py
    python benchmarks/profile_forward.py --candidates bf16-plain bf16 --json

``--smoke`` profiles a one-block model on CPU (the test suite does this); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from dinov2_heads import create_backbone

# The benchmarks folder is not a package: its scripts import each other from this folder.
sys.path.append(str(Path(__file__).resolve().parent))
speedups = importlib.import_module("eager_speedups")

#: Kernel families, matched in order against the lower-cased kernel name.
FAMILIES: list[tuple[str, re.Pattern[str]]] = [
    ("attention", re.compile(r"flash|fmha|attention|cudnn.*sdpa|efficient|mem_eff")),
    ("matmul", re.compile(r"gemm|sm90_xmma|cutlass|cublas|matmul|addmm|\bmm\b|linear|nvjet")),
    ("layer_norm", re.compile(r"layer_norm|layernorm|norm_kernel")),
    ("gelu", re.compile(r"gelu")),
    ("copy", re.compile(r"copy|cat|contiguous|clone|memcpy|transpose")),
    ("elementwise", re.compile(r"elementwise|vectorized|add|mul|unrolled")),
]


def family(name: str) -> str:
    """The family of a kernel name (``other`` when none matches)."""
    lower = name.lower()
    for label, pattern in FAMILIES:
        if pattern.search(lower):
            return label
    return "other"


def profile_case(
    variant: str,
    batch: int,
    candidate: str,
    *,
    device: torch.device,
    size: tuple[int, int],
    overrides: dict[str, Any],
    iters: int,
) -> dict[str, Any]:
    """GPU (or CPU) time per forward pass by kernel family, and the slowest kernels."""
    torch.manual_seed(0)
    model = create_backbone(variant, **overrides)
    speedups._spread_weights(model)
    images = torch.randn(batch, 3, *size, device=device)
    run, note = speedups.build_run(candidate, model, device, images, "eager")
    for _ in range(2):
        run(images)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(iters):
            run(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_family: dict[str, float] = defaultdict(float)
    kernels: list[tuple[str, float, int]] = []
    for event in prof.key_averages():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = float(event.self_device_time_total)
        else:
            if not event.key.startswith("aten::"):
                continue
            us = float(event.self_cpu_time_total)
        if us <= 0:
            continue
        per_family[family(event.key)] += us / iters
        kernels.append((event.key, us / iters, event.count // iters))
    total = sum(per_family.values())
    kernels.sort(key=lambda k: -k[1])
    return {
        "variant": variant,
        "batch": batch,
        "candidate": candidate,
        "note": note,
        "total_ms": total / 1e3,
        "families_ms": {k: v / 1e3 for k, v in sorted(per_family.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:120], "ms": us / 1e3, "calls": calls} for name, us, calls in kernels[:12]
        ],
    }


def format_case(case: dict[str, Any]) -> str:
    """Two Markdown tables: time by family, then the slowest kernels."""
    total = case["total_ms"]
    lines = [
        f"### {case['variant']} b{case['batch']} {case['candidate']} "
        f"({total:.2f} ms of kernels per pass{'; ' + case['note'] if case['note'] else ''})",
        "",
        "| family | ms per pass | share |",
        "| --- | --- | --- |",
    ]
    for name, ms in case["families_ms"].items():
        lines.append(f"| {name} | {ms:.3f} | {ms / total:.1%} |")
    lines += ["", "| kernel | ms per pass | calls per pass |", "| --- | --- | --- |"]
    for kernel in case["top_kernels"]:
        name = kernel["name"].replace("|", "/")
        lines.append(f"| `{name}` | {kernel['ms']:.3f} | {kernel['calls']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["bf16"],
        choices=[c for c in speedups.CANDIDATES if c not in speedups.COMPILED],
        metavar="NAME",
    )
    parser.add_argument("--iters", type=int, default=5, help="profiled forward passes per case")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Profile every case; returns what ``--json`` prints."""
    args = build_parser().parse_args(argv)
    device = speedups.bt.smoke_or_cuda_device(args.device, smoke=args.smoke)
    if args.smoke:
        overrides: dict[str, Any] = {"depth": 1, "img_size": 56}
        size, iters = (28, 42), 1
        cases = [("dinov2_vits14", 2)]
        candidates = [c for c in args.candidates if c not in speedups.CUDA_ONLY]
    else:
        overrides, size, iters = {}, (224, 224), args.iters
        cases = [("dinov2_vits14", 256), ("dinov2_vitl14", 128)]
        candidates = args.candidates
    results = [
        profile_case(
            variant,
            batch,
            candidate,
            device=device,
            size=size,
            overrides=overrides,
            iters=iters,
        )
        for variant, batch in cases
        for candidate in candidates
    ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(format_case(case) for case in results))
    return results


if __name__ == "__main__":
    main()
