"""k-NN classification: chunked training set against one full similarity matrix.

Each mode runs in a fresh process, so its peak resident memory is its own. The default is the
official scale of a small evaluation: 200,000 training features of width 384 (ViT-S/14 class
tokens), 10,000 queries, k up to 200::

    python benchmarks/knn.py
    python benchmarks/knn.py --device cuda --json

Rows: ``full`` scores all queries against the whole training set at once (the official module's
single-process behaviour, one (Q, M) similarity matrix); ``chunked`` visits the training set
``--chunk-size`` rows at a time with ``--query-batch`` queries at once. Time is the median of
``--repeats`` runs after one warm-up; peak memory is the process's growth in resident memory on
CPU, or ``torch.cuda.max_memory_allocated`` on a GPU. The two modes' scores are compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from dinov2_heads.neighbors import KnnClassifier

KS = (10, 20, 100, 200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=200_000, help="training features M")
    parser.add_argument("--queries", type=int, default=10_000, help="query features Q")
    parser.add_argument("--dim", type=int, default=384, help="feature width D")
    parser.add_argument("--classes", type=int, default=1000, help="number of classes C")
    parser.add_argument("--chunk-size", type=int, default=65_536, help="training rows per chunk")
    parser.add_argument("--query-batch", type=int, default=1024, help="queries per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--mode", choices=("full", "chunked"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process: median seconds, peak memory and a checksum of the scores."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.train,), generator=g).to(device)
    queries = torch.randn(args.queries, args.dim, generator=g).to(device)
    chunked = args.mode == "chunked"
    knn = KnnClassifier(
        train,
        labels,
        k=KS,
        num_classes=args.classes,
        chunk_size=args.chunk_size if chunked else None,
    )
    batch = args.query_batch if chunked else args.queries

    def score() -> torch.Tensor:
        parts = [
            knn.predict_proba(queries[i : i + batch])[20] for i in range(0, len(queries), batch)
        ]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return torch.cat(parts)

    score()  # warm-up
    baseline = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = score()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else max(_rss_bytes(), baseline)
    )
    return {
        "mode": args.mode,
        "seconds": statistics.median(times),
        "peak_bytes": peak,
        "checksum": float(scores.double().sum()),
        "argmax": scores.argmax(dim=1).tolist(),
    }


def run_child(mode: str, passthrough: list[str]) -> dict[str, Any]:
    """One mode in a fresh process; a process that dies (say, killed out of memory) gives a row
    with ``error`` instead of figures, so that the other mode is still measured."""
    out = subprocess.run(
        [sys.executable, __file__, *passthrough, "--mode", mode], capture_output=True, text=True
    )
    if out.returncode == 0:
        row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return row
    if out.returncode < 0:
        name = signal.Signals(-out.returncode).name
        reason = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        reason = f"exit {out.returncode}: {last}"
    return {"mode": mode, "error": reason}


def summarise(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON summary; the comparisons are ``None`` unless both modes ran."""
    full, chunked = rows
    both = "error" not in full and "error" not in chunked
    return {
        "train": args.train,
        "queries": args.queries,
        "dim": args.dim,
        "k": list(KS),
        "device": args.device,
        "chunk_size": args.chunk_size,
        "query_batch": args.query_batch,
        "rows": [{k: v for k, v in row.items() if k != "argmax"} for row in rows],
        "same_predictions": full["argmax"] == chunked["argmax"] if both else None,
        "speed_ratio_chunked_over_full": full["seconds"] / chunked["seconds"] if both else None,
        "memory_ratio_full_over_chunked": (
            full["peak_bytes"] / max(chunked["peak_bytes"], 1) if both else None
        ),
    }


def format_table(summary: dict[str, Any]) -> str:
    """The rows as a text table, and the comparison when both modes ran."""
    queries = summary["queries"]
    lines = [
        f"k-NN, {summary['train']} x {summary['dim']} training features, {queries} queries, "
        f"k = {', '.join(map(str, summary['k']))}, {summary['device']}, torch {torch.__version__}",
        f"{'mode':<8}  {'median s':>9}  {'queries/s':>10}  {'peak MiB':>9}",
    ]
    for row in summary["rows"]:
        if "error" in row:
            lines.append(f"{row['mode']:<8}  failed: {row['error']}")
            continue
        lines.append(
            f"{row['mode']:<8}  {row['seconds']:>9.3f}  {queries / row['seconds']:>10.0f}  "
            f"{row['peak_bytes'] / 2**20:>9.0f}"
        )
    if summary["same_predictions"] is not None:
        lines.append(
            f"chunked is {summary['speed_ratio_chunked_over_full']:.2f}x the speed of full with "
            f"{summary['memory_ratio_full_over_chunked']:.1f}x less peak memory; same "
            f"predictions: {summary['same_predictions']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    summary = summarise(args, [run_child(mode, passthrough) for mode in ("full", "chunked")])
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0 if all("error" not in row for row in summary["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
