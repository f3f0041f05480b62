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
- ``fp8`` / ``fp8-rowwise``: the linear layers of the blocks (``qkv``, ``proj``, ``fc1``,
  ``fc2``) as FP8 (e4m3) matrix products, ``torch._scaled_mm``, with one float32 scale per
  tensor, or one per token and per output channel; weights quantised once, activations on each
  call (by a function compiled with ``dynamic=True``, one graph for every shape). Only on
  compute capability 8.9 and later (H100, H200, L40); elsewhere the row says it was skipped;
- ``compiled-static`` / ``compiled-dynamic``: ``torch.compile`` for the input shape only, and
  with dynamic batch, height and width (what ``FrozenBackbone(compile=True)`` uses once a second
  image size is seen), with the compilation time;
- ``custom-op+compile``: ``compiled-static`` with the Triton LayerNorm and residual kernels kept
  in the graph as custom operators (``accelerate(model, compiled_kernels=True)``) instead of
  Inductor's own code for them; its note (and ``compiled-static``'s) counts the kernel launches
  per forward pass, which says whether the operators ran.

Each candidate is timed on the large batches (ViT-S/14 b256, ViT-L/14 b128), and ``bf16``,
``bf16-plain`` and ``cuda-graph`` also on small ones (b1 and b8), where launch overhead counts.

Run on a CUDA machine (about four minutes on one H200, most of it compiling)::

    python benchmarks/eager_speedups.py
    python benchmarks/eager_speedups.py --json

``--smoke`` runs every candidate that works on CPU on a one-block model with tiny images and the
``eager`` compile backend, in seconds (the test suite does this); its figures mean nothing. The
FP8 rows run there too, through a float32 stand-in for the FP8 matrix product (the same
quantised inputs and scales), untimed: they check the quantisation and the module swap.
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
from dinov2_heads.accel import accelerate, norm_kernels, norm_ops
from dinov2_heads.layers import Attention, LayerScale, Mlp

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
    "fp8",
    "fp8-rowwise",
    "compiled-static",
    "custom-op+compile",
    "compiled-dynamic",
]
CUDA_ONLY = {"cuda-graph"}
#: Candidates that need FP8 matrix units (compute capability 8.9 and later).
FP8 = {"fp8", "fp8-rowwise"}
#: Candidates that compile the forward pass (their first call is timed as compile_s).
COMPILED = {"compiled-static", "custom-op+compile", "compiled-dynamic"}
#: The candidates also timed at small batch sizes, where launches rather than FLOPs count.
SMALL_BATCH_CANDIDATES = ["bf16", "bf16-plain", "cuda-graph"]
FP8_MIN_CAPABILITY = (8, 9)
FP8_SKIPPED = "skipped: needs compute capability 8.9+"
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
    "fp8": {"fp8"},
    "fp8-rowwise": {"fp8", "rowwise"},
    "compiled-static": set(),
    "custom-op+compile": {"custom-op"},
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


# ---------------------------------------------------------------------------- FP8

#: The largest finite float8 e4m3 value.
E4M3_MAX = 448.0


def fp8_scale(t: Tensor, *, rowwise: bool) -> Tensor:
    """float32 scale(s) that map ``t`` into e4m3's range: one (a 0-dim tensor), or one per row
    (R, 1) when ``rowwise``. ``t / scale`` then has its largest magnitude at 448."""
    amax = t.abs().amax(dim=-1, keepdim=True) if rowwise else t.abs().amax()
    return (amax.float() / E4M3_MAX).clamp(min=1e-12)


def quantize_fp8(t: Tensor, rowwise: bool) -> tuple[Tensor, Tensor]:
    """(``t`` in float8 e4m3, its float32 scale): ``t`` is about ``q.float() * scale``.

    Clamped to e4m3's range first: a cast of a value past 448 would give NaN on some devices.
    """
    scale = fp8_scale(t, rowwise=rowwise)
    quantized = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return quantized, scale


def fp8_capable(device: torch.device) -> bool:
    """Whether ``device`` has FP8 matrix units for ``torch._scaled_mm`` (8.9 and later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def emulated_scaled_mm(
    a: Tensor,
    b: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """``torch._scaled_mm``'s result, computed in float32 from the same FP8 inputs and scales.

    The stand-in for devices without FP8 matrix units (the smoke run): the rounding to e4m3 is
    the real one, the products and sums are exact in float32.
    """
    out = (a.float() * scale_a) @ (b.float() * scale_b)
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def fp8_matmul(device: torch.device) -> Callable[..., Tensor]:
    """``torch._scaled_mm`` where the device has FP8 matrix units, else the float32 stand-in."""
    if not fp8_capable(device):
        return emulated_scaled_mm

    def scaled_mm(
        a: Tensor,
        b: Tensor,
        scale_a: Tensor,
        scale_b: Tensor,
        bias: Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> Tensor:
        return torch._scaled_mm(
            a,
            b,
            scale_a=scale_a,
            scale_b=scale_b,
            bias=bias,
            out_dtype=out_dtype,
            use_fast_accum=True,
        )

    return scaled_mm


class Fp8Linear(nn.Module):
    """``nn.Linear`` as an FP8 matrix product: (..., K) -> (..., N).

    The weight (N, K) is quantised once to e4m3 with its scale (one, or one per output
    channel); each call quantises the input the same way (one scale, or one per token) and
    runs ``matmul`` (``torch._scaled_mm`` or :func:`emulated_scaled_mm`), with the bias in the
    product where the device allows it (added after it otherwise). The output has the input's
    dtype.
    """

    def __init__(
        self,
        linear: nn.Linear,
        *,
        rowwise: bool,
        quantize: Callable[[Tensor, bool], tuple[Tensor, Tensor]],
        matmul: Callable[..., Tensor],
    ) -> None:
        super().__init__()
        weight, scale = quantize_fp8(linear.weight.detach(), rowwise)
        self.register_buffer("weight", weight)  # (N, K) row-major: column-major as K x N
        self.register_buffer("weight_scale", scale.reshape(1, -1) if rowwise else scale)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rowwise, self.quantize, self.matmul = rowwise, quantize, matmul
        #: Whether the bias goes into the product; cleared when the device refuses it.
        self.bias_in_product = bias is not None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K)
        quantized, scale = self.quantize(flat, self.rowwise)
        weight_t = self.weight.t()  # (K, N), column-major as _scaled_mm wants it
        out: Tensor | None = None
        if self.bias_in_product:
            try:
                out = self.matmul(
                    quantized, weight_t, scale, self.weight_scale, self.bias, out_dtype=x.dtype
                )
            except RuntimeError:  # this device or scaling refuses a bias: add it after
                self.bias_in_product = False
        if out is None:
            out = self.matmul(quantized, weight_t, scale, self.weight_scale, out_dtype=x.dtype)
            if self.bias is not None:
                out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_fp8(
    model: DinoVisionTransformer,
    *,
    rowwise: bool,
    quantize: Callable[[Tensor, bool], tuple[Tensor, Tensor]],
    matmul: Callable[..., Tensor],
) -> int:
    """Swap each block's ``qkv``, ``proj``, ``fc1`` and ``fc2`` for :class:`Fp8Linear`, on
    the model's device and dtype; returns how many were swapped."""
    swapped = 0
    for block in model.blocks:
        owners: list[tuple[nn.Module, tuple[str, ...]]] = []
        if isinstance(block.attn, Attention):
            owners.append((block.attn, ("qkv", "proj")))
        if isinstance(block.mlp, Mlp):
            owners.append((block.mlp, ("fc1", "fc2")))
        for owner, names in owners:
            for name in names:
                linear = getattr(owner, name)
                if type(linear) is nn.Linear:
                    fp8 = Fp8Linear(linear, rowwise=rowwise, quantize=quantize, matmul=matmul)
                    setattr(owner, name, fp8)
                    swapped += 1
    return swapped


@contextlib.contextmanager
def counted_kernel_launches() -> Iterator[list[int]]:
    """Count the launches of the Triton norm kernel inside (eager, or by the custom operators
    in a compiled graph); the count is the list's one element."""
    count = [0]
    original = norm_kernels.launch_parts

    def counting(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        count[0] += 1
        return original(*args, **kwargs)

    norm_kernels.launch_parts = counting
    try:
        yield count
    finally:
        norm_kernels.launch_parts = original


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
    The FP8 candidates use ``torch._scaled_mm`` on a device with FP8 matrix units and the
    float32 stand-in elsewhere (:func:`fp8_matmul`); their activation quantisation is compiled
    with ``compile_backend``.
    """
    notes = []
    changes = CHANGES[candidate]
    if "plain" not in changes:
        accelerate(model)
    if "fold" in changes:
        notes.append(f"{fold_layer_scale(model)} LayerScales folded")
    if "gelu" in changes:
        notes.append(f"{use_gelu_epilogue(model)} MLPs with the GELU epilogue")
    if "custom-op" in changes:
        reason = norm_ops.register()
        if reason is None:
            accelerate(model, compiled_kernels=True)
        else:
            notes.append(f"no custom operators ({reason}): compiled plain")
    model.to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    if "fp8" in changes:
        rowwise = "rowwise" in changes
        quantize = torch.compile(quantize_fp8, backend=compile_backend, dynamic=True)
        matmul = fp8_matmul(device)
        count = use_fp8(model, rowwise=rowwise, quantize=quantize, matmul=matmul)
        scales = "per-token and per-channel scales" if rowwise else "per-tensor scales"
        how = "torch._scaled_mm" if matmul is not emulated_scaled_mm else "float32 stand-in"
        notes.append(f"{count} linear layers in FP8 e4m3, {scales}, {how}")
    forward: Callable[[Tensor], Any] = model.forward_features
    if candidate in COMPILED:
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
    smoke: bool = False,
    deadline: float | None = None,
    compile_reserve_s: float = 0.0,
) -> list[Result]:
    """Every candidate on one (variant, batch), with the same weights and images.

    A candidate that would start after ``deadline`` (``time.monotonic()``; a compiled one with
    less than ``compile_reserve_s`` left before it) is skipped and says so. Without FP8 matrix
    units the FP8 candidates are skipped too, except in a ``smoke`` run, which runs them
    through the float32 stand-in to check their errors, untimed.
    """
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
        untimed = candidate in FP8 and not fp8_capable(device)
        if untimed and not smoke:
            result.note = FP8_SKIPPED
            continue
        reserve = compile_reserve_s if candidate in COMPILED else 0.0
        if deadline is not None and time.monotonic() + reserve > deadline:
            result.note = "skipped: out of time budget"
            continue
        log(f"{variant} b{batch} {candidate}")
        model = create_backbone(variant, **overrides)
        model.load_state_dict(state)
        try:
            start = time.perf_counter()
            run, result.note = build_run(candidate, model, device, images, compile_backend)
            with counted_kernel_launches() as launches:
                out = run(images)
            if any(isinstance(m, Fp8Linear) and not m.bias_in_product for m in model.modules()):
                result.note += "; bias added after the FP8 product"
            if candidate in COMPILED:
                result.compile_s = time.perf_counter() - start
                launched = f"{launches[0]} Triton norm kernel launches per pass"
                result.note = f"{result.note}; {launched}" if result.note else launched
            if untimed:
                result.note = f"{FP8_SKIPPED}; smoke run: {result.note}, untimed"
            else:
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
        if untimed:
            continue
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


def small_batch_cases(smoke: bool) -> list[tuple[str, int]]:
    """The (variant, batch) cases of :data:`SMALL_BATCH_CANDIDATES`: b1 and b8 of ViT-S/14 and
    ViT-L/14 (b1 of the one-block model for a smoke run)."""
    if smoke:
        return [("dinov2_vits14", 1)]
    return [(variant, batch) for variant in ("dinov2_vits14", "dinov2_vitl14") for batch in (1, 8)]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument(
        "--candidates", nargs="+", choices=CANDIDATES, default=CANDIDATES, metavar="NAME"
    )
    parser.add_argument("--iters", type=int, default=20, help="timed forward passes per case")
    parser.add_argument(
        "--skip-small-batches",
        action="store_true",
        help="leave out the b1 and b8 cases (bf16, bf16-plain, cuda-graph)",
    )
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
    small = [c for c in SMALL_BATCH_CANDIDATES if c in candidates]
    plan = [(variant, batch, candidates) for variant, batch in cases]
    if not args.skip_small_batches:
        plan += [(variant, batch, small) for variant, batch in small_batch_cases(args.smoke)]
    progress = (lambda text: print(text, file=sys.stderr)) if args.json else print
    env = bt.environment(device)
    results: list[Result] = []
    for variant, batch, chosen in plan:
        results += run_case(
            variant,
            batch,
            candidates=chosen,
            device=device,
            size=size,
            overrides=overrides,
            warmup=warmup,
            iters=iters,
            compile_backend=backend,
            log=lambda text: print(text, file=sys.stderr),
            smoke=args.smoke,
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
