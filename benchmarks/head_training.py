"""Training heads fast: backbone-in-the-loop epochs against a feature cache, and the 52-head grid.

Side by side, at one batch size:

- ``live epoch``: an epoch of one ``LinearHead`` with the frozen backbone run on every batch, as
  the blog (and the official code) train: images -> backbone -> head -> SGD step.
- ``extraction``: one run of ``extract_features`` over the same images into an on-disk store.
- ``cached epoch``: an epoch of the same head from the store (``FeatureDataset``, shuffled).
- step times on one batch of cached features: one ``LinearHead``, the 52-head
  ``LinearProbeGrid`` (one matrix product per input width, ``GridSGD``), and 52 separate
  ``nn.Linear`` modules updated in a Python loop with ``torch.optim.SGD``; against one
  backbone forward at the same batch (timed inside the live epoch).

Run (ViT-S/14 with random weights, 224x224, batch 256, 10 classes, 256 images)::

    python benchmarks/head_training.py

Images are random tensors held in memory, so the live epoch does not even pay for decoding
JPEGs: the cache's advantage measured here is a lower bound. Each step row is the median of
``--iters`` timed runs after ``--warmup`` untimed ones; the cached epoch is the median of
``--epochs`` epochs; the live epoch and the extraction run once (they are the slow part).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants
from dinov2_heads.cache import FeatureDataset, extract_features
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearHead, linear_input
from dinov2_heads.training import LinearProbeGrid, train_one_epoch

TARGETS = {
    "cached_epoch_speedup": (">=", 50.0),
    "grid_vs_separate_speedup": (">=", 3.0),
    "grid_step_over_backbone_forward": ("<", 0.15),
}


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def linear_step(
    head: nn.Module, optimizer: torch.optim.Optimizer, features: Features, labels: Tensor
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(features), labels).backward()
        optimizer.step()

    return step


def grid_step(
    grid: LinearProbeGrid, batch: int, features: Features, labels: Tensor
) -> Callable[[], None]:
    optimizer = grid.make_optimizer(batch)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        grid.loss(grid(features), labels).backward()
        optimizer.step()

    return step


def separate_step(
    grid: LinearProbeGrid, batch: int, features: Features, labels: Tensor
) -> Callable[[], None]:
    """52 ``nn.Linear`` heads, one forward, loss and update each, in a Python loop."""
    device = features.class_token.device
    modules = [
        nn.Linear(spec.input_dim(grid.embed_dim), grid.num_classes).to(device)
        for spec in grid.specs
    ]
    optimizer = torch.optim.SGD(
        [
            {"params": module.parameters(), "lr": spec.lr * batch / 256}
            for module, spec in zip(modules, grid.specs, strict=True)
        ],
        momentum=0.9,
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for module, spec in zip(modules, grid.specs, strict=True):
            inputs = linear_input(features, spec.n_blocks, spec.avgpool)
            loss = loss + F.cross_entropy(module(inputs), labels)
        loss.backward()
        optimizer.step()

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time everything and return the results as plain data."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = {"depth": args.depth} if args.depth else {}
    backbone = create_backbone(args.variant, device=device, **overrides)
    # 4 blocks so that the grid's 4-block heads have their input; a 1-block head pays the same.
    frozen = FrozenBackbone(backbone, n_last_blocks=min(4, len(backbone.blocks)))
    height, width = args.size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, height, width, generator=generator)
    labels = torch.randint(0, args.classes, (args.images,), generator=generator)
    data = TensorDataset(images, labels)
    dim = frozen.embed_dim

    def new_head() -> tuple[LinearHead, torch.optim.Optimizer]:
        torch.manual_seed(1)
        head = LinearHead(dim, args.classes, n_blocks=1, avgpool=True).to(device)
        return head, torch.optim.SGD(
            head.parameters(), lr=1e-3 * args.batch_size / 256, momentum=0.9
        )

    # (a) The backbone in the loop, every epoch.
    head, optimizer = new_head()
    forward_seconds: list[float] = []
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    sync(device)
    start = time.perf_counter()
    for batch_images, batch_labels in loader:
        before = time.perf_counter()
        features = frozen(batch_images.to(device))
        sync(device)
        forward_seconds.append(time.perf_counter() - before)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(features), batch_labels.to(device)).backward()
        optimizer.step()
    sync(device)
    live_epoch = time.perf_counter() - start

    # (b) One extraction, then epochs from the cache.
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        store = extract_features(
            frozen, data, path=folder, batch_size=args.batch_size, progress=False
        )
        extraction = time.perf_counter() - start
        head, optimizer = new_head()
        cached_loader = FeatureDataset(store).loader(args.batch_size, shuffle=True, seed=0)
        epochs = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            train_one_epoch(head, cached_loader, optimizer, F.cross_entropy)
            sync(device)
            epochs.append(time.perf_counter() - start)
        cached_epoch = statistics.median(epochs)

        # Step times on one batch of cached features (repeated up to the batch size).
        rows = torch.arange(args.batch_size) % len(store)
        features = store.features(rows).to(device)
        targets = store.labels(rows)
        assert isinstance(targets, Tensor)
        targets = targets.to(device)
    head, optimizer = new_head()
    grid = LinearProbeGrid(dim, args.classes).to(device)
    steps = {
        "linear_head_step": linear_step(head, optimizer, features, targets),
        "grid_step": grid_step(grid, args.batch_size, features, targets),
        "separate_52_step": separate_step(grid, args.batch_size, features, targets),
    }
    step_seconds = {
        name: median_seconds(fn, device, args.warmup, args.iters) for name, fn in steps.items()
    }
    backbone_forward = statistics.median(forward_seconds)
    ratios = {
        "cached_epoch_speedup": live_epoch / cached_epoch,
        "grid_vs_separate_speedup": step_seconds["separate_52_step"] / step_seconds["grid_step"],
        "grid_step_over_backbone_forward": step_seconds["grid_step"] / backbone_forward,
        "grid_step_over_linear_head_step": (
            step_seconds["grid_step"] / step_seconds["linear_head_step"]
        ),
    }
    targets_met = {
        name: (ratios[name] >= bound) if op == ">=" else (ratios[name] < bound)
        for name, (op, bound) in TARGETS.items()
    }
    return {
        "config": {
            "variant": args.variant,
            "depth": len(backbone.blocks),
            "size": [height, width],
            "images": args.images,
            "batch_size": args.batch_size,
            "classes": args.classes,
            "heads_in_grid": len(grid),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "cached_epochs": args.epochs,
            "torch": torch.__version__,
        },
        "seconds": {
            "live_epoch": live_epoch,
            "extraction": extraction,
            "cached_epoch": cached_epoch,
            "backbone_forward": backbone_forward,
            **step_seconds,
        },
        "ratios": ratios,
        "targets_met": targets_met,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as aligned text tables."""
    config, seconds, ratios = result["config"], result["seconds"], result["ratios"]
    lines = [
        f"{config['variant']} depth {config['depth']}, {config['size'][0]}x{config['size'][1]}, "
        f"{config['images']} images, batch {config['batch_size']}, {config['classes']} classes, "
        f"{config['device']} ({config['threads']} threads)",
        "",
        f"{'what':<44} {'ms':>12}",
    ]
    labels = {
        "live_epoch": "epoch, backbone in the loop (a)",
        "extraction": "extraction into the cache (once)",
        "cached_epoch": f"epoch from the cache (b), median of {config['cached_epochs']}",
        "backbone_forward": "one backbone forward",
        "linear_head_step": "step: one LinearHead",
        "grid_step": f"step: LinearProbeGrid ({config['heads_in_grid']} heads)",
        "separate_52_step": f"step: {config['heads_in_grid']} nn.Linear in a Python loop",
    }
    for key, label in labels.items():
        lines.append(f"{label:<44} {1000 * seconds[key]:>12.2f}")
    lines += ["", f"{'ratio':<44} {'value':>12}  target"]
    names = {
        "cached_epoch_speedup": "epoch (a) / epoch from the cache (b)",
        "grid_vs_separate_speedup": "52 separate steps / grid step",
        "grid_step_over_backbone_forward": "grid step / backbone forward",
        "grid_step_over_linear_head_step": "grid step / one LinearHead step",
    }
    for key, label in names.items():
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            target = f"{op} {bound:g}: " + ("met" if result["targets_met"][key] else "NOT met")
        lines.append(f"{label:<44} {ratios[key]:>12.4g}  {target}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="dinov2_vits14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks (default: all)")
    parser.add_argument("--size", type=parse_size, default=(224, 224), help="H or HxW")
    parser.add_argument("--images", type=int, default=256, help="images in the dataset")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="cached epochs to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
