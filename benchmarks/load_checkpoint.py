"""Time and peak memory to load an official-format checkpoint: load_backbone vs plain torch.load.

The script writes an official-layout checkpoint with random weights (ViT-L/14 by default, about
1.2 GB; ``--variant dinov2_vitg14`` for the 4.5 GB ViT-g) into a temporary folder, then loads it
in a fresh Python process per method and repeat, so memory peaks never mix, and deletes it.

    python benchmarks/load_checkpoint.py
    python benchmarks/load_checkpoint.py --variant dinov2_vitg14 --json

Methods:

- ``plain``: ``create_backbone(variant)``, ``torch.load(path, weights_only=True)``,
  ``model.load_state_dict(state_dict)`` -- the usual recipe: random init, then a full copy.
- ``plain+mmap``: the same with ``torch.load(..., mmap=True)``; the copy into the model remains.
- ``load_backbone``: ``dinov2_heads.checkpoints.load_backbone(path)``; architecture inferred,
  the model built on the meta device, each tensor read into memory of its own and adopted as a
  parameter (nothing of the file stays mapped).
- ``load_backbone+mmap``: ``load_backbone(path, mmap=True)``; the memory-mapped tensors become
  the parameters (views of the file: the file must not be rewritten while the model lives).

Columns: ``load_s`` is the median wall time from the call to a ready model (imports excluded);
``peak_mb`` the process's peak resident memory during the load minus its resident memory just
before (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere);
``after_forward_mb`` the same peak after one 224x224 forward pass, which reads every weight.
Memory-mapped pages of the file count as resident once read. The file was just written, so it
is read from the page cache in every method alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants

METHODS = ("plain", "plain+mmap", "load_backbone", "load_backbone+mmap")


def write_checkpoint(path: Path, variant: str, depth: int | None) -> int:
    """Save random official-layout weights for ``variant``; returns the file size in bytes."""
    overrides = {"depth": depth} if depth else {}
    shapes = create_backbone(variant, device="meta", **overrides).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(t.shape, generator=generator) * 0.02 for name, t in shapes.items()}
    torch.save(state, path)
    return path.stat().st_size


def _status_mb(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return None


def reset_peak() -> None:
    """Restart the peak-memory count from the current use (Linux; elsewhere a no-op)."""
    clear = Path("/proc/self/clear_refs")
    if clear.exists():
        clear.write_text("5")


def current_mb() -> float:
    """Resident memory now, in MiB (the lifetime peak where the current use is not exposed)."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_mb()


def peak_mb() -> float:
    """Peak resident memory since :func:`reset_peak`, in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(method: str, path: Path, variant: str, depth: int | None) -> dict[str, float]:
    """Load once with ``method`` in this process; returns timings and memory peaks."""
    from dinov2_heads.checkpoints import load_backbone

    overrides = {"depth": depth} if depth else {}
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    reset_peak()
    before = current_mb()
    start = time.perf_counter()
    if method.startswith("load_backbone"):
        model = load_backbone(path, mmap=method.endswith("+mmap"))
    else:
        model = create_backbone(variant, **overrides)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=method != "plain")
        model.load_state_dict(state, strict=True)
        del state
    seconds = time.perf_counter() - start
    after_load = peak_mb()
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    return {
        "load_s": seconds,
        "peak_mb": after_load - before,
        "after_forward_mb": peak_mb() - before,
    }


def measure(method: str, path: Path, variant: str, depth: int | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", method, "--path", str(path)]
    command += ["--variant", variant] + (["--depth", str(depth)] if depth else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / f"{args.variant}_pretrain.pth"
        size = write_checkpoint(path, args.variant, args.depth)
        rows = []
        for method in METHODS:
            runs = [measure(method, path, args.variant, args.depth) for _ in range(args.repeats)]
            rows.append(
                {
                    "method": method,
                    **{key: statistics.median(r[key] for r in runs) for key in runs[0]},
                }
            )
    plain = rows[0]
    for row in rows:
        row["time_ratio"] = row["load_s"] / plain["load_s"]
        row["memory_ratio"] = row["peak_mb"] / plain["peak_mb"]
    return {
        "variant": args.variant,
        "depth": args.depth,
        "file_mb": size / 2**20,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    depth = f", depth {result['depth']}" if result["depth"] else ""
    print(
        f"{result['variant']}{depth}: {result['file_mb']:.0f} MiB file, median of "
        f"{result['repeats']} fresh processes per method (torch {result['torch']})"
    )
    print(
        f"{'method':<18} {'load_s':>7} {'x plain':>8} {'peak MiB':>9} {'x plain':>8} "
        f"{'after fwd MiB':>14}"
    )
    for row in result["rows"]:
        print(
            f"{row['method']:<18} {row['load_s']:>7.2f} {row['time_ratio']:>8.2f} "
            f"{row['peak_mb']:>9.0f} {row['memory_ratio']:>8.2f} {row['after_forward_mb']:>14.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dinov2_vitl14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks, for a quick run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per method")
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoint")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path, args.variant, args.depth)))
        return
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
