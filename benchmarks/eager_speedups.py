"""Candidate speed-ups of the uncompiled bf16 path, each timed against it in the same run.

The ``bf16`` row is the library's default GPU path (weights stored in bf16, no compilation,
the model accelerated by ``dinov2_heads.accel.accelerate`` as ``FrozenBackbone`` runs it). This
script measures, on one machine and in one run, what each candidate change gains on top of it
before any of them goes into the library; its first GPU run, before the fast modules existed,
chose what they now do (see docs/performance.md):

- ``bf16-plain``: the same without ``accelerate``, PyTorch's own kernels (for comparison);
- ``fold-layerscale``: LayerScale folded into the weights and bias of the linear layer before
  it (``gamma * (W x + b) = (gamma W) x + gamma b``, exact in real arithmetic), removing one
  elementwise pass per residual branch;
- ``cudnn-attention``: ``scaled_dot_product_attention`` with the cuDNN backend tried first;
- ``gelu-epilogue``: the first MLP layer and its GELU as one cuBLASLt call
  (``torch._addmm_activation``); on CUDA that GELU is the tanh approximation (on CPU the exact
  one), so every row reports its error against float32 next to its time;
- ``cuda-graph``: the whole forward pass captured once as a CUDA graph and replayed (CUDA only);
- ``fold+gelu`` and ``fold+gelu+cudnn``: the changes a library default could keep (no CUDA
  graph, which fixes the input shape);
- ``all``: every change above together;
- ``compiled-static`` / ``compiled-dynamic``: ``torch.compile`` for the input shape only, and
  with dynamic batch, height and width (what ``FrozenBackbone(compile=True)`` uses once a second
  image size is seen), with the compilation time.

Run on a CUDA machine (about a minute on one H100)::

    python benchmarks/eager_speedups.py
    python benchmarks/eager_speedups.py --json

``--smoke`` runs every candidate that works on CPU on a one-block model with tiny images and the
``eager`` compile backend, in seconds (the test suite does this); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.accel import accelerate
from dinov2_heads.layers import LayerScale, Mlp

# The benchmarks folder is not a package: its scripts import each other from this folder.
sys.path.append(str(Path(__file__).resolve().parent))
bt = importlib.import_module("backbone_throughput")

CANDIDATES = [
    "bf16",
    "bf16-plain",
    "fold-layerscale",
    "cudnn-attention",
    "gelu-epilogue",
    "cuda-graph",
    "fold+gelu",
    "fold+gelu+cudnn",
    "all",
    "compiled-static",
    "compiled-dynamic",
]
CUDA_ONLY = {"cuda-graph"}
#: The changes each candidate makes.
CHANGES: dict[str, set[str]] = {
    "bf16": set(),
    "bf16-plain": {"plain"},
    "fold-layerscale": {"fold"},
    "cudnn-attention": {"cudnn"},
    "gelu-epilogue": {"gelu"},
    "cuda-graph": {"graph"},
    "fold+gelu": {"fold", "gelu"},
    "fold+gelu+cudnn": {"fold", "gelu", "cudnn"},
    "all": {"fold", "gelu", "cudnn", "graph"},
    "compiled-static": set(),
    "compiled-dynamic": set(),
}


# ---------------------------------------------------------------------------- the candidates


def fold_layer_scale(model: DinoVisionTransformer) -> int:
    """Fold each block's LayerScale into the linear layer before it; returns how many.

    ``ls1`` scales the attention output projection ``attn.proj``, ``ls2`` the last layer of the
    feed-forward network (``fc2``, or ``w3`` for SwiGLU). Call it on float32 weights, before any
    cast, so the products are rounded once.
    """
    folded = 0
    with torch.no_grad():
        for block in model.blocks:
            mlp_out = block.mlp.fc2 if isinstance(block.mlp, Mlp) else block.mlp.w3
            for name, linear in (("ls1", block.attn.proj), ("ls2", mlp_out)):
                scale = getattr(block, name)
                if not isinstance(scale, LayerScale):
                    continue
                linear.weight.mul_(scale.gamma[:, None])
                if linear.bias is not None:
                    linear.bias.mul_(scale.gamma)
                setattr(block, name, nn.Identity())
                folded += 1
    return folded


def use_gelu_epilogue(model: DinoVisionTransformer) -> int:
    """Run ``fc1`` and its GELU as one call (one cuBLASLt GEMM on CUDA); returns how many MLPs."""
    patched = 0
    for block in model.blocks:
        if isinstance(block.mlp, Mlp) and block.mlp.fc1.bias is not None:
            block.mlp.forward = types.MethodType(_mlp_forward_gelu_epilogue, block.mlp)
            patched += 1
    return patched


def _mlp_forward_gelu_epilogue(self: Mlp, x: Tensor) -> Tensor:
    flat = x.reshape(-1, x.shape[-1])
    hidden = torch._addmm_activation(self.fc1.bias, flat, self.fc1.weight.t(), use_gelu=True)
    return self.fc2(hidden).reshape(*x.shape[:-1], -1)


@contextlib.contextmanager
def cudnn_attention_first() -> Iterator[None]:
    """``scaled_dot_product_attention`` tries cuDNN first, then the usual order."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    with sdpa_kernel(order, set_priority=True):
        yield


def cuda_graph(forward: Callable[[Tensor], Any], example: Tensor) -> Callable[[Tensor], Any]:
    """Capture ``forward`` on ``example``'s shape once; the result copies inputs in and replays."""
    static_input = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up allocations outside the graph, as CUDA graphs require
            forward(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = forward(static_input)

    def replay(images: Tensor) -> Any:
        static_input.copy_(images)
        graph.replay()
        return static_output

    return replay


# ---------------------------------------------------------------------------- one case


@dataclass
class Result:
    """One candidate on one model: time, speed against plain bf16, and error against fp32."""

    variant: str
    batch: int
    candidate: str
    median_ms: float = float("nan")
    images_per_s: float = float("nan")
    speedup: float = float("nan")
    class_rel: float = float("nan")
    patch_rel: float = float("nan")
    compile_s: float = float("nan")
    note: str = ""


def build_run(
    candidate: str,
    model: DinoVisionTransformer,
    device: torch.device,
    example: Tensor,
    compile_backend: str,
) -> tuple[Callable[[Tensor], Any], str]:
    """Apply ``candidate`` to a float32 ``model`` and return (bf16 forward, what was changed).

    The model is accelerated first (the default path; not for ``bf16-plain``), then changed.
    """
    notes = []
    changes = CHANGES[candidate]
    if "plain" not in changes:
        accelerate(model)
    if "fold" in changes:
        notes.append(f"{fold_layer_scale(model)} LayerScales folded")
    if "gelu" in changes:
        notes.append(f"{use_gelu_epilogue(model)} MLPs with the GELU epilogue")
    model.to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    forward: Callable[[Tensor], Any] = model.forward_features
    if candidate.startswith("compiled"):
        dynamic = candidate == "compiled-dynamic"
        forward = torch.compile(forward, backend=compile_backend, dynamic=dynamic)
    attention = cudnn_attention_first if "cudnn" in changes else contextlib.nullcontext

    def run(images: Tensor) -> Any:
        with torch.no_grad(), attention():
            return forward(images.to(torch.bfloat16))

    if "graph" in changes and device.type == "cuda":
        with torch.no_grad():
            run = cuda_graph(run, example)
        notes.append("CUDA graph")
    return run, "; ".join(notes)


def run_case(
    variant: str,
    batch: int,
    *,
    candidates: Sequence[str],
    device: torch.device,
    size: tuple[int, int],
    overrides: dict[str, Any],
    warmup: int,
    iters: int,
    compile_backend: str,
    log: Callable[[str], None],
) -> list[Result]:
    """Every candidate on one (variant, batch), with the same weights and images."""
    torch.manual_seed(0)
    base = create_backbone(variant, **overrides)
    _spread_weights(base)
    state = {key: value.clone() for key, value in base.state_dict().items()}
    images = torch.randn(batch, 3, *size, device=device)
    with torch.no_grad(), bt.exact_fp32():
        reference = base.to(device).forward_features(images)
    del base
    results: list[Result] = []
    for candidate in candidates:
        result = Result(variant, batch, candidate)
        results.append(result)
        if candidate in CUDA_ONLY and device.type != "cuda":
            result.note = "needs CUDA"
            continue
        log(f"{variant} b{batch} {candidate}")
        model = create_backbone(variant, **overrides)
        model.load_state_dict(state)
        try:
            start = time.perf_counter()
            run, result.note = build_run(candidate, model, device, images, compile_backend)
            out = run(images)
            if candidate.startswith("compiled"):
                result.compile_s = time.perf_counter() - start
            timing = bt.measure(run, images, warmup=warmup, iters=iters)
        except (RuntimeError, NotImplementedError) as error:
            result.note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            continue
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result.class_rel = _relative_error(out["x_norm_clstoken"], reference["x_norm_clstoken"])
        result.patch_rel = _relative_error(
            out["x_norm_patchtokens"], reference["x_norm_patchtokens"]
        )
        median = statistics.median(timing.seconds)
        result.median_ms = median * 1e3
        result.images_per_s = batch / median
    baseline = results[0].images_per_s if results and results[0].candidate == "bf16" else None
    for result in results:
        if baseline is not None:
            result.speedup = result.images_per_s / baseline
    return results


def _spread_weights(model: nn.Module) -> None:
    # Fresh models have LayerScale 1 and zero biases, which would make folding trivially exact;
    # trained models have neither.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.gamma.uniform_(0.05, 1.0)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(std=0.02)


def _relative_error(got: Tensor, want: Tensor) -> float:
    want = want.float()
    return float((got.float() - want).norm() / want.norm())


# ---------------------------------------------------------------------------- output


def format_table(results: Sequence[Result]) -> str:
    """Markdown table; ``speed-up`` is against the plain bf16 row of the same model."""
    lines = [
        "| variant | batch | candidate | median ms | images/s | speed-up | class rel err "
        "| patch rel err | compile s | note |",
        "|" + " --- |" * 10,
    ]
    for r in results:
        cells = [
            r.variant,
            str(r.batch),
            r.candidate,
            _number(r.median_ms, ",.2f"),
            _number(r.images_per_s, ",.0f"),
            _number(r.speedup, ".3f", suffix="x"),
            _number(r.class_rel, ".2e"),
            _number(r.patch_rel, ".2e"),
            _number(r.compile_s, ".1f"),
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float, spec: str, suffix: str = "") -> str:
    return "" if value != value else f"{value:{spec}}{suffix}"


def without_nan(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN: a figure that was not measured is null.
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument(
        "--candidates", nargs="+", choices=CANDIDATES, default=CANDIDATES, metavar="NAME"
    )
    parser.add_argument("--iters", type=int, default=20, help="timed forward passes per case")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every candidate; returns what ``--json`` prints."""
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    device = bt.smoke_or_cuda_device(args.device, smoke=args.smoke)
    candidates = ["bf16", *(c for c in args.candidates if c != "bf16")]
    if args.smoke:
        overrides: dict[str, Any] = {"depth": 1, "img_size": 56}
        size, warmup, iters, backend = (28, 42), 0, 1, "eager"
        cases = [("dinov2_vits14", 2)]
    else:
        overrides, size, warmup, iters, backend = {}, (224, 224), 3, args.iters, "inductor"
        cases = [("dinov2_vits14", 256), ("dinov2_vitl14", 128)]
    progress = (lambda text: print(text, file=sys.stderr)) if args.json else print
    env = bt.environment(device)
    results: list[Result] = []
    for variant, batch in cases:
        results += run_case(
            variant,
            batch,
            candidates=candidates,
            device=device,
            size=size,
            overrides=overrides,
            warmup=warmup,
            iters=iters,
            compile_backend=backend,
            log=lambda text: print(text, file=sys.stderr),
        )
    progress(f"# Uncompiled bf16 speed-ups on {env.get('gpu', 'CPU')} (torch {env['torch']})\n")
    progress(format_table(results))
    if args.smoke:
        progress("\nsmoke run: one block, tiny images, eager compile backend; not a measurement")
    output = {
        "environment": env,
        "size": list(size),
        "results": [without_nan(asdict(r)) for r in results],
        "seconds": time.monotonic() - start,
    }
    if args.json:
        print(json.dumps(output, indent=2, default=str))
    return output


if __name__ == "__main__":
    main()
