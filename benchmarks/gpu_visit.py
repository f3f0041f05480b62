"""Everything still to be measured on a GPU, in one command with one time budget.

The speed figures that need CUDA come from several scripts. This runs them in order of
importance, each in its own process with a timeout cut from what is left of ``--budget-s``,
writes each one's JSON and table under ``--out``, and prints a summary of what ran::

    python benchmarks/gpu_visit.py --out gpu-results            # about 9 minutes on one H200
    python benchmarks/gpu_visit.py --out gpu-results --budget-s 300 --only gpu_check

Parts, most important first:

1. ``kernel_tests``: the Triton custom-op and fallback tests on CUDA (``pytest``).
2. ``gpu_check``: accuracy against float32, throughput against the targets, then the candidate
   speed-ups (FP8, CUDA graphs, cuDNN attention, compiled with the custom ops kept).
3. ``input_pipeline``: extraction from JPEG folders against backbone-only images/s.
4. ``dense_slide``: sliding-window segmentation, crops batched against one at a time (bf16).
5. ``depth_heads``: depth inference images/s per head type (linear, linear4, DPT; bf16).

A part that does not finish in its share of the time is stopped; the summary says so, and the
parts after it still run while time is left. ``--smoke`` runs every part's own smoke mode on
CPU in a minute or so (the tests do this), without the CUDA tests and the depth heads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Part:
    """One script to run: its arguments on a GPU and in a smoke run, and its share of time."""

    name: str
    argv: tuple[str, ...]
    smoke_argv: tuple[str, ...] | None
    #: The largest share of the budget this part may take (it may finish sooner).
    share_s: float
    #: Whether it prints JSON on stdout (tables then go to stderr or are not printed).
    json: bool = True


PARTS = (
    Part(
        "kernel_tests",
        (
            "-m",
            "pytest",
            "-q",
            str(HERE.parent / "tests" / "accel" / "test_norm_ops.py"),
            str(HERE.parent / "tests" / "accel" / "test_fallback.py"),
        ),
        None,
        share_s=90,
        json=False,
    ),
    Part(
        "gpu_check",
        (str(HERE / "gpu_check.py"), "--budget-s", "270", "--json"),
        (str(HERE / "gpu_check.py"), "--smoke", "--json"),
        share_s=330,
    ),
    Part(
        "input_pipeline",
        # Half the default samples per extraction: both hand-offs and the loader-only passes
        # run in each extraction, and the part must fit its share.
        (str(HERE / "input_pipeline.py"), "--device", "cuda", "--images", "4096", "--json"),
        (str(HERE / "input_pipeline.py"), "--smoke", "--json"),
        share_s=200,
    ),
    Part(
        "dense_slide",
        (
            str(HERE / "dense_slide.py"),
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--flip",
            "--batch-size",
            "4",
            "--json",
        ),
        (str(HERE / "dense_slide.py"), "--smoke", "--json"),
        share_s=90,
    ),
    Part(
        "depth_heads",
        (
            str(HERE / "depth_heads.py"),
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--batch-size",
            "32",
            "--json",
        ),
        None,
        share_s=60,
    ),
)


@dataclass
class Outcome:
    """What became of one part."""

    name: str
    status: str  # "ok", "failed (exit N)", "timed out after N s", "skipped: ..."
    seconds: float
    output: str | None = None


def run_part(part: Part, out: Path, *, timeout_s: float, smoke: bool) -> Outcome:
    """Run ``part`` in a fresh Python process; its stdout and stderr go to files under ``out``."""
    argv = part.smoke_argv if smoke else part.argv
    if argv is None:
        return Outcome(part.name, "skipped: needs CUDA", 0.0)
    suffix = ".json" if part.json else ".txt"
    stdout_path = out / f"{part.name}{suffix}"
    stderr_path = out / f"{part.name}.log"
    start = time.perf_counter()
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        try:
            code = subprocess.run(
                [sys.executable, *argv], stdout=stdout, stderr=stderr, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            seconds = time.perf_counter() - start
            return Outcome(part.name, f"timed out after {seconds:.0f} s", seconds, str(stderr_path))
    seconds = time.perf_counter() - start
    status = "ok" if code == 0 else f"failed (exit {code})"
    return Outcome(part.name, status, seconds, str(stdout_path))


def run(
    parts: Sequence[Part], out: Path, *, budget_s: float, smoke: bool, min_part_s: float = 20.0
) -> list[Outcome]:
    """Run ``parts`` in order within ``budget_s`` seconds in all."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget_s
    outcomes = []
    for part in parts:
        left = deadline - time.perf_counter()
        if left < min_part_s:
            outcomes.append(Outcome(part.name, f"skipped: {max(left, 0):.0f} s left", 0.0))
            continue
        outcomes.append(run_part(part, out, timeout_s=min(part.share_s, left), smoke=smoke))
    return outcomes


def format_summary(outcomes: Sequence[Outcome]) -> str:
    """A Markdown table: part, what became of it, seconds, where its output is."""
    lines = ["| part | status | seconds | output |", "| --- | --- | --- | --- |"]
    for outcome in outcomes:
        lines.append(
            f"| {outcome.name} | {outcome.status} | {outcome.seconds:.0f} | "
            f"{outcome.output or ''} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for each part's JSON and log")
    parser.add_argument("--budget-s", type=float, default=560.0, help="seconds for all parts")
    parser.add_argument(
        "--only", nargs="+", choices=[part.name for part in PARTS], help="run just these parts"
    )
    parser.add_argument("--smoke", action="store_true", help="each part's smoke run, on CPU")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    parts = [part for part in PARTS if args.only is None or part.name in args.only]
    outcomes = run(parts, Path(args.out), budget_s=args.budget_s, smoke=args.smoke)
    summary = [asdict(outcome) for outcome in outcomes]
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2) if args.json else format_summary(outcomes))
    return summary


if __name__ == "__main__":
    main()
