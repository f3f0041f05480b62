"""Backbone throughput: images/s, achieved TFLOP/s and peak memory of ``forward_features``.

Times the native DINOv2 backbone (random weights) for chosen variants, image sizes, batch sizes
and precision modes, optionally next to an official DINOv2 checkout in the same run.

Run on CPU (fp32)::

    python benchmarks/backbone_throughput.py --variants dinov2_vits14 --sizes 224 126x252

Run on a GPU (fp32, official-style fp16 autocast, bf16/fp16 stored weights, compiled)::

    python benchmarks/backbone_throughput.py --variants dinov2_vits14 dinov2_vitl14 \\
        --batch-sizes 128 --compare-official ~/src/dinov2

Modes:

- ``fp32``: float32 weights and activations (the only default on CPU).
- ``autocast-fp16``: float32 weights under ``torch.autocast(dtype=torch.float16)``, as the
  official evaluation code runs the model.
- ``bf16`` / ``fp16``: weights stored in that dtype once, inputs cast to it (what
  ``FrozenBackbone(dtype=...)`` does).
- ``compiled-bf16`` / ``compiled-fp16``: the same, through ``torch.compile``.
- ``autocast-fp16-plain`` / ``bf16-plain``: as above without ``dinov2_heads.accel.accelerate``
  (on CUDA our model then runs the official model's sequence of PyTorch kernels).

Our model runs accelerated (``accelerate(model)``, as ``FrozenBackbone`` runs it on a GPU) in
every uncompiled mode but the ``-plain`` ones; the official model is never accelerated. On CPU
the accelerated modules compute what the plain ones do.

Achieved TFLOP/s counts a multiply-add as two FLOPs, from the analytic count of
:func:`vit_forward_flops`. Each case runs ``--warmup`` untimed then ``--iters`` timed forward
passes (with a device synchronisation after each) and reports the median. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA (weights included) and, on CPU, how far the
resident set grew above its level before the case (Linux peak-RSS counter, reset per case).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.accel import accelerate
from dinov2_heads.backbone import BackboneConfig, get_config, list_variants
from dinov2_heads.layers import swiglu_hidden_features

# ---------------------------------------------------------------------------- FLOPs


def vit_forward_flops(config: BackboneConfig, height: int, width: int) -> int:
    """FLOPs of one image through ``forward_features`` (a multiply-add counts as two).

    With P the patch size, N = (H / P)(W / P) patches, T = 1 + R + N tokens, width D and FFN
    hidden width F (``mlp_ratio * D``; for SwiGLU the official rounded width F'):

    - patch embedding: ``2 N (3 P^2) D``
    - per block: qkv ``2 T D (3D)`` + attention scores ``Q K^T`` ``2 T^2 D`` + weighted sum
      ``A V`` ``2 T^2 D`` + output projection ``2 T D^2`` + FFN, which is ``2 (2 T D F)`` for
      the GELU MLP and ``2 T D (2F') + 2 T F' D`` for SwiGLU.

    LayerNorms, softmax, GELU/SiLU, LayerScale, biases and residual additions are elementwise
    and left out (well under 1% of the total). ViT-L/14 at 224x224 comes to 162.0 GFLOP.
    """
    p, d = config.patch_size, config.embed_dim
    n = (height // p) * (width // p)
    t = 1 + config.num_register_tokens + n
    patch_embed = 2 * n * (3 * p * p) * d
    qkv = 2 * t * d * 3 * d
    attention = 2 * (2 * t * t * d)
    projection = 2 * t * d * d
    if config.ffn_layer == "swiglufused":
        hidden = swiglu_hidden_features(int(d * config.mlp_ratio))
        ffn = 2 * t * d * (2 * hidden) + 2 * t * hidden * d
    else:
        hidden = int(d * config.mlp_ratio)
        ffn = 2 * (2 * t * d * hidden)
    return patch_embed + config.depth * (qkv + attention + projection + ffn)


# ---------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """How the backbone is run: storage dtype, autocast dtype, compilation, acceleration."""

    name: str
    weights: torch.dtype
    autocast: torch.dtype | None = None
    compiled: bool = False
    #: Leave our model unaccelerated: PyTorch's own kernels, without ``dinov2_heads.accel``.
    plain: bool = False


MODES: dict[str, Mode] = {
    "fp32": Mode("fp32", torch.float32),
    "autocast-fp16": Mode("autocast-fp16", torch.float32, autocast=torch.float16),
    "autocast-fp16-plain": Mode(
        "autocast-fp16-plain", torch.float32, autocast=torch.float16, plain=True
    ),
    "bf16": Mode("bf16", torch.bfloat16),
    "bf16-plain": Mode("bf16-plain", torch.bfloat16, plain=True),
    "fp16": Mode("fp16", torch.float16),
    "compiled-bf16": Mode("compiled-bf16", torch.bfloat16, compiled=True),
    "compiled-fp16": Mode("compiled-fp16", torch.float16, compiled=True),
}
CUDA_MODES = ["fp32", "autocast-fp16", "bf16", "fp16", "compiled-bf16"]
CPU_MODES = ["fp32"]


def prepare(
    model: nn.Module,
    mode: Mode,
    device: torch.device,
    compile_mode: str | None = None,
    *,
    ours: bool = False,
) -> Callable[[Tensor], Any]:
    """Put ``model`` in ``mode`` on ``device`` and return the forward function to time.

    The returned function takes float32 images (B, 3, H, W) and casts them itself, as a data
    loader would hand them over. ``ours`` marks this library's model, which is accelerated
    (``dinov2_heads.accel.accelerate``) in the uncompiled modes that are not ``-plain``, as
    ``FrozenBackbone`` runs it on a GPU.
    """
    model.to(device=device, dtype=mode.weights).eval().requires_grad_(False)
    if ours and not mode.plain and not mode.compiled:
        accelerate(model)
    forward: Callable[[Tensor], Any] = model.forward_features  # type: ignore[assignment]
    if mode.compiled:
        forward = torch.compile(forward, mode=compile_mode, dynamic=False)

    def run(images: Tensor) -> Any:
        with torch.no_grad(), _autocast(device, mode.autocast):
            return forward(images.to(mode.weights))

    return run


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def smoke_or_cuda_device(requested: str | None, *, smoke: bool) -> torch.device:
    """The device of a GPU script: ``requested``, else CUDA (CPU for a ``--smoke`` run)."""
    device = torch.device(requested or ("cpu" if smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --smoke for the CPU dry run")
    return device


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Switch TF32 off for a float32 reference, and restore the previous settings."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    """Seconds per timed iteration and the peak memory of one case."""

    seconds: list[float]
    peak_bytes: int
    memory: str


def measure(run: Callable[[Tensor], Any], images: Tensor, *, warmup: int, iters: int) -> Timing:
    """Time ``run(images)``: ``warmup`` untimed calls, then ``iters`` timed ones."""
    device = images.device
    synchronize: Callable[[], None] = _cuda_synchronize if device.type == "cuda" else _no_op
    with _peak_memory(device) as peak:
        for _ in range(warmup):
            run(images)
        synchronize()
        seconds = []
        for _ in range(iters):
            start = time.perf_counter()
            run(images)
            synchronize()
            seconds.append(time.perf_counter() - start)
    return Timing(seconds, peak["bytes"], peak["kind"])


def _cuda_synchronize() -> None:
    torch.cuda.synchronize()


def _no_op() -> None:
    pass


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    result: dict[str, Any] = {"bytes": 0, "kind": ""}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result.update(bytes=torch.cuda.max_memory_allocated(device), kind="cuda allocated")
        return
    before = _resident_bytes(reset_peak=True)
    yield result
    result.update(bytes=max(0, _peak_resident_bytes() - before), kind="RSS growth")


def _read_status(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def _resident_bytes(*, reset_peak: bool) -> int:
    if reset_peak:
        # Writing 5 to clear_refs resets the kernel's peak-RSS counter (VmHWM) to the current
        # RSS, so each case sees its own peak; elsewhere the lifetime maximum is the fallback.
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    current = _read_status("VmRSS")
    return current if current is not None else _max_rss_bytes()


def _peak_resident_bytes() -> int:
    peak = _read_status("VmHWM")
    return peak if peak is not None else _max_rss_bytes()


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---------------------------------------------------------------------------- official model

_OFFICIAL_BUILDERS = {384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}


def load_official(path: str | os.PathLike[str]) -> tuple[ModuleType | None, str]:
    """Import ``dinov2.models.vision_transformer`` from a checkout or installation at ``path``.

    ``path`` is a directory holding ``dinov2/models/vision_transformer.py`` (a git checkout of
    facebookresearch/dinov2 or a ``site-packages``), or the ``dinov2`` package directory itself.
    xFormers is switched off (``XFORMERS_DISABLED=1``) so both models use PyTorch attention.

    Returns:
        The module (or ``None``) and a one-line message saying what happened.
    """
    root = Path(path).expanduser()
    if (root / "models" / "vision_transformer.py").is_file() and root.name == "dinov2":
        root = root.parent
    if not (root / "dinov2" / "models" / "vision_transformer.py").is_file():
        return None, (
            f"official DINOv2 not timed: no dinov2/models/vision_transformer.py under {root}; "
            "pass the root of a facebookresearch/dinov2 checkout"
        )
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("dinov2.models.vision_transformer")
    except Exception as error:
        return None, f"official DINOv2 not timed: importing it from {root} failed: {error!r}"
    finally:
        sys.path.remove(str(root))
    return module, f"official DINOv2 from {Path(module.__file__ or root).resolve()}"


def build_official(module: ModuleType, config: BackboneConfig) -> nn.Module:
    """The official model with the architecture of ``config``, as the official hub builds it."""
    if config.embed_dim not in _OFFICIAL_BUILDERS:
        raise ValueError(f"no official builder has embed_dim {config.embed_dim}")
    block_fn: dict[str, Any] = {}
    if hasattr(module, "Block") and hasattr(module, "MemEffAttention"):
        # The hub's vit_* builders use this block; without xFormers it runs plain attention.
        block_fn["block_fn"] = partial(module.Block, attn_class=module.MemEffAttention)
    model: nn.Module = module.DinoVisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        init_values=config.init_values,
        ffn_layer=config.ffn_layer,
        block_chunks=0,
        num_register_tokens=config.num_register_tokens,
        interpolate_antialias=config.interpolate_antialias,
        interpolate_offset=config.interpolate_offset,
        **block_fn,
    )
    return model


# ---------------------------------------------------------------------------- cases


@dataclass
class Row:
    """One timed case (one line of the table)."""

    implementation: str
    variant: str
    mode: str
    height: int
    width: int
    batch: int
    median_ms: float = float("nan")
    images_per_s: float = float("nan")
    tflops: float = float("nan")
    peak_mib: float = float("nan")
    memory: str = ""
    gflop_per_image: float = 0.0
    iters: int = 0
    error: str = ""
    seconds: list[float] = field(default_factory=list)


@dataclass
class Settings:
    """What to run (see ``--help``)."""

    variants: list[str]
    sizes: list[tuple[int, int]]
    batch_sizes: list[int]
    modes: list[str]
    device: torch.device
    warmup: int = 2
    iters: int = 5
    overrides: dict[str, Any] = field(default_factory=dict)
    compile_mode: str | None = None
    official: ModuleType | None = None


def run_benchmark(settings: Settings, *, log: Callable[[str], None] = print) -> list[Row]:
    """Time every (variant, size, batch, mode, implementation) case; errors become rows."""
    rows: list[Row] = []
    for variant in settings.variants:
        config = get_config(variant).replace(**settings.overrides)
        torch.manual_seed(0)
        reference = create_backbone(variant, device=settings.device, **settings.overrides)
        state = {k: v.clone() for k, v in reference.state_dict().items()}
        del reference
        implementations: list[tuple[str, Callable[[], nn.Module]]] = [
            ("dinov2-heads", partial(_build_ours, variant, settings.overrides, state)),
        ]
        if settings.official is not None:
            official = partial(_build_official, settings.official, config, state)
            implementations.append(("official", official))
        for height, width in settings.sizes:
            flops = vit_forward_flops(config, height, width)
            for batch in settings.batch_sizes:
                images = torch.randn(batch, 3, height, width, device=settings.device)
                for mode_name in settings.modes:
                    for implementation, build in implementations:
                        row = Row(implementation, variant, mode_name, height, width, batch)
                        row.gflop_per_image = flops / 1e9
                        size = f"{height}x{width}"
                        log(f"timing {implementation} {variant} {size} b{batch} {mode_name}")
                        _time_case(row, build, MODES[mode_name], images, flops, settings)
                        rows.append(row)
                del images
    return rows


def _with_state(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    # The model was built on the meta device (no random initialisation to wait for); the
    # copies of the weights become its parameters.
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    return model


def _build_ours(variant: str, overrides: dict[str, Any], state: dict[str, Tensor]) -> nn.Module:
    return _with_state(create_backbone(variant, device="meta", **overrides), state)


def _build_official(
    module: ModuleType, config: BackboneConfig, state: dict[str, Tensor]
) -> nn.Module:
    with torch.device("meta"):
        model = build_official(module, config)
    return _with_state(model, state)


def _time_case(
    row: Row,
    build: Callable[[], nn.Module],
    mode: Mode,
    images: Tensor,
    flops: int,
    settings: Settings,
) -> None:
    model: nn.Module | None = None
    try:
        model = build()
        ours = row.implementation == "dinov2-heads"
        run = prepare(model, mode, settings.device, settings.compile_mode, ours=ours)
        timing = measure(run, images, warmup=settings.warmup, iters=settings.iters)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        row.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return
    finally:
        del model
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    fill_row(row, timing, flops)


def fill_row(row: Row, timing: Timing, flops: int) -> None:
    """Put the median time, images/s, TFLOP/s and peak memory of ``timing`` into ``row``."""
    median = statistics.median(timing.seconds)
    row.gflop_per_image = flops / 1e9
    row.seconds = timing.seconds
    row.iters = len(timing.seconds)
    row.median_ms = median * 1e3
    row.images_per_s = row.batch / median
    row.tflops = flops * row.batch / median / 1e12
    row.peak_mib = timing.peak_bytes / 2**20
    row.memory = timing.memory


def parity(settings: Settings, variant: str, height: int, width: int) -> float | None:
    """Max |ours - official| of ``x_norm_patchtokens`` in fp32 on CPU (None without official)."""
    if settings.official is None:
        return None
    torch.manual_seed(0)
    ours = create_backbone(variant, **settings.overrides)
    config = get_config(variant).replace(**settings.overrides)
    official = _build_official(settings.official, config, ours.state_dict()).eval()
    images = torch.randn(2, 3, height, width)
    with torch.no_grad():
        a = ours.forward_features(images)["x_norm_patchtokens"]
        forward_features = cast(Callable[[Tensor], dict[str, Tensor]], official.forward_features)
        b = forward_features(images)["x_norm_patchtokens"]
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------- output


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table; ``rel`` is images/s over the first row of the same variant/size/batch."""
    header = (
        "| implementation | variant | size | batch | mode | median ms | images/s | TFLOP/s "
        "| peak MiB | rel |"
    )
    lines = [header, "|" + " --- |" * 10]
    first: dict[tuple[str, int, int, int], float] = {}
    for row in rows:
        key = (row.variant, row.height, row.width, row.batch)
        size = f"{row.height}x{row.width}"
        if row.error:
            lines.append(
                f"| {row.implementation} | {row.variant} | {size} | {row.batch} | {row.mode} "
                f"| failed: {row.error} | | | | |"
            )
            continue
        base = first.setdefault(key, row.images_per_s)
        lines.append(
            f"| {row.implementation} | {row.variant} | {size} | {row.batch} | {row.mode} "
            f"| {row.median_ms:,.1f} | {row.images_per_s:,.1f} | {row.tflops:.3g} "
            f"| {row.peak_mib:,.0f} | {row.images_per_s / base:.2f} |"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """JSON-friendly rows (NaN becomes ``None``)."""
    out = []
    for row in rows:
        item = asdict(row)
        for key, value in item.items():
            if isinstance(value, float) and value != value:
                item[key] = None
        out.append(item)
    return out


# ---------------------------------------------------------------------------- command line


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"126x252"`` -> (126, 252) (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 126x252, got {text!r}")
    return values[0], values[1]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["dinov2_vits14"], choices=list_variants())
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[(224, 224), (126, 252)],
        help="HxW (or one number for square); multiples of 14",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        help=f"default: {' '.join(CPU_MODES)} on CPU, {' '.join(CUDA_MODES)} on CUDA",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per case")
    parser.add_argument("--iters", type=int, default=5, help="timed passes per case (median)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--depth", type=int, help="build fewer blocks (quick smoke runs)")
    parser.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune")
    parser.add_argument(
        "--compare-official",
        metavar="PATH",
        help="also time the official model from a dinov2 checkout at PATH",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; returns what ``--json`` prints."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    patch = 14
    for height, width in args.sizes:
        if height % patch or width % patch:
            raise SystemExit(f"size {height}x{width} is not a multiple of the patch size {patch}")
    log = partial(print, file=sys.stderr)
    notes: list[str] = []
    official = None
    if args.compare_official:
        official, message = load_official(args.compare_official)
        notes.append(message)
        log(message)
    settings = Settings(
        variants=args.variants,
        sizes=args.sizes,
        batch_sizes=args.batch_sizes,
        modes=args.modes or (CUDA_MODES if device.type == "cuda" else CPU_MODES),
        device=device,
        warmup=args.warmup,
        iters=args.iters,
        overrides={"depth": args.depth} if args.depth else {},
        compile_mode=args.compile_mode,
        official=official,
    )
    rows = run_benchmark(settings, log=log)
    for variant in settings.variants if official is not None else []:
        height, width = settings.sizes[0]
        diff = parity(settings, variant, height, width)
        notes.append(f"{variant} {height}x{width} fp32 max |ours - official| = {diff:.2e}")
    result = {
        "environment": environment(device),
        "flops": "analytic, 2 per multiply-add: patch embed, qkv, QK^T, AV, proj, MLP/SwiGLU",
        "settings": {
            "warmup": settings.warmup,
            "iters": settings.iters,
            "overrides": settings.overrides,
            "compile_mode": settings.compile_mode,
        },
        "rows": rows_as_dicts(rows),
        "notes": notes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        env = environment(device)
        where = env.get("gpu") or f"CPU, {env['cpu_threads']} threads"
        iters, warmup = settings.iters, settings.warmup
        print(f"torch {env['torch']} on {where}; median of {iters} after {warmup} warm-up")
        print(format_table(rows))
        for note in notes:
            print(note)
    return result


if __name__ == "__main__":
    main()
