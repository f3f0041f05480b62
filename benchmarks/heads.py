"""Cost split: each head's forward + backward time per batch against the frozen backbone's forward.

The backbone runs once per batch (or once per dataset with a feature cache); the heads run forward
and backward every step. This prints what each costs at the same batch, so you can see where a
training step's time goes and what a feature cache would save.

Run on CPU (ViT-S/14, 224x224, batch 8)::

    python benchmarks/heads.py

The vehicle-crop setting on a GPU, bf16 weights::

    python benchmarks/heads.py --variant dinov2_vitb14 --size 126x252 --batch-size 64 \\
        --device cuda --dtype bf16 --classes 178

Rows: ``backbone forward`` is ``FrozenBackbone`` (``n_last_blocks`` = 4 so every head can read its
input); each head row is forward + cross-entropy + backward on features computed beforehand
(the time a step spends in the heads, excluding the optimizer update). Each row is the median of
``--iters`` timed runs after ``--warmup`` untimed ones, with a device synchronisation after each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"126x252"`` -> (126, 252)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        height, width = (int(p) for p in parts)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must be H or HxW, got {text!r}") from error
    return height, width


def time_runs(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def head_step(head: nn.Module, features: Features, targets: Tensor) -> Callable[[], None]:
    """One forward + cross-entropy + backward of ``head`` (gradients reset each time)."""

    def step() -> None:
        head.zero_grad(set_to_none=True)
        out = head(features)
        outputs = out.values() if isinstance(out, dict) else [out]
        loss = sum(nn.functional.cross_entropy(logits, targets) for logits in outputs)
        assert isinstance(loss, Tensor)
        loss.backward()

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the backbone and heads, time them, and return the results as plain data."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = {"depth": args.depth} if args.depth else {}
    backbone = create_backbone(args.variant, device=device, **overrides)
    depth = len(backbone.blocks)
    n_blocks = min(4, depth)
    frozen = FrozenBackbone(backbone, n_last_blocks=n_blocks, dtype=DTYPES[args.dtype])
    height, width = args.size
    images = torch.randn(args.batch_size, 3, height, width, device=device)
    targets = torch.randint(0, args.classes, (args.batch_size,), device=device)

    features = frozen(images)
    dim, grid = frozen.embed_dim, features.grid
    heads: dict[str, nn.Module] = {"LinearHead (n_blocks=1)": LinearHead(dim, args.classes)}
    if n_blocks > 1:
        heads[f"LinearHead (n_blocks={n_blocks})"] = LinearHead(
            dim, args.classes, n_blocks=n_blocks
        )
    heads[f"Conv1dNeck ({grid[0]}x{grid[1]})"] = Conv1dNeck(grid, dim, args.classes)
    heads["MultiHead (3 Conv1dNecks)"] = MultiHead(
        {f"head{i}": Conv1dNeck(grid, dim, args.classes) for i in range(3)}
    )

    backbone_seconds = time_runs(lambda: frozen(images), device, args.warmup, args.iters)
    backbone_median = statistics.median(backbone_seconds)
    rows = [
        {
            "name": "backbone forward",
            "median_ms": 1000 * backbone_median,
            "ratio": 1.0,
            "parameters": sum(p.numel() for p in frozen.parameters()),
        }
    ]
    for name, head in heads.items():
        head.to(device).train()
        seconds = time_runs(head_step(head, features, targets), device, args.warmup, args.iters)
        median = statistics.median(seconds)
        rows.append(
            {
                "name": name,
                "median_ms": 1000 * median,
                "ratio": median / backbone_median,
                "parameters": sum(p.numel() for p in head.parameters()),
            }
        )
    return {
        "config": {
            "variant": args.variant,
            "depth": depth,
            "size": [height, width],
            "grid": list(grid),
            "batch_size": args.batch_size,
            "classes": args.classes,
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
    lines = [
        f"{config['variant']} depth {config['depth']}, {config['size'][0]}x{config['size'][1]} "
        f"(grid {config['grid'][0]}x{config['grid'][1]}), batch {config['batch_size']}, "
        f"{config['classes']} classes, {config['dtype']} on {config['device']} "
        f"({config['threads']} threads), median of {config['iters']}",
        "",
        f"{'component':<28} {'ms/batch':>10} {'x backbone':>11} {'parameters':>12}",
    ]
    for row in result["results"]:
        lines.append(
            f"{row['name']:<28} {row['median_ms']:>10.2f} {row['ratio']:>11.4f} "
            f"{row['parameters']:>12,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dinov2_vits14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks (default: all)")
    parser.add_argument("--size", type=parse_size, default=(224, 224), help="H or HxW")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="backbone storage")
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
