"""Vehicle brand from 126x252 crops: the Conv1d neck against a linear head, side by side.

A brand is often told by a logo a few patches wide. A linear head sees the class token and the
mean of all patch tokens, where one patch is diluted 162 times; the Conv1d neck mixes the patch
tokens first. Both heads are trained on the same cached features for the same number of epochs,
and the script prints their validation accuracy, size and training time, and saves both.

Run with no arguments to try it on synthetic vehicles whose brand is a small emblem:

    python examples/vehicle_brand.py
    python examples/vehicle_brand.py --images brand_crops/ --checkpoint dinov2_vitb14_pretrain.pth
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import ImageFolderDataset, get_preset
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.export import save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, LinearHead, predict
from dinov2_heads.training import train_one_epoch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of crops, one sub-folder per brand")
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument("--out", help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--num-images", type=int, default=240, help="synthetic images to draw")
    parser.add_argument("--num-brands", type=int, default=4, help="synthetic brands")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="vehicle_brand_"))
    out.mkdir(parents=True, exist_ok=True)

    # 126x252 crops: a 9x18 patch grid, 162 patch tokens.
    transform = get_preset("vehicle_crop")
    if args.images:
        folder = Path(args.images)
    else:
        vehicles = SyntheticVehicles(args.num_images, seed=args.seed, num_brands=args.num_brands)
        folder = vehicles.write_folder(out / "crops", label="brand")
        print(f"wrote {args.num_images} synthetic crops to {folder} (class = emblem brand)")
    dataset = ImageFolderDataset(folder, transform, on_error="skip", label_name="brand")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    num_val = max(1, round(args.val_fraction * len(dataset)))
    splits = {"train": order[num_val:].tolist(), "val": order[:num_val].tolist()}

    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE)
        print("backbone: RANDOM weights (pass --checkpoint for real DINOv2 features)")
    frozen = FrozenBackbone(backbone)

    # The neck needs every patch token, so the cache keeps them (keep="patch_tokens").
    stores = {
        name: extract_features(
            frozen,
            Subset(dataset, split),
            path=out / "features" / name,
            keep="patch_tokens",
            preprocessing=transform,
        )
        for name, split in splits.items()
    }
    print(stores["train"])

    dim, classes, grid = backbone.embed_dim, dataset.classes, stores["train"].grid
    heads: dict[str, nn.Module] = {
        "conv1d_neck": Conv1dNeck(grid, dim, len(classes), class_names=classes),
        "linear_head": LinearHead(dim, len(classes), class_names=classes),
    }
    rows = []
    for name, head in heads.items():
        torch.manual_seed(args.seed)
        seconds = train(head, stores["train"], args)
        accuracy = evaluate(head, stores["val"])
        path = save_heads(
            out / f"{name}.pt",
            head,
            backbone=frozen,
            input_size=(126, 252),
            extra={"preprocessing": "vehicle_crop", "val_accuracy": accuracy},
        )
        parameters = sum(p.numel() for p in head.parameters())
        rows.append((name, type(head).__name__, parameters, accuracy, seconds, path))

    print(
        f"\nbrand, {len(classes)} classes, {len(splits['val'])} validation crops "
        f"(chance {100 / len(classes):.1f}%):"
    )
    print(f"{'head':<12} {'type':<11} {'parameters':>10} {'accuracy':>8} {'train s':>7}")
    for name, kind, parameters, accuracy, seconds, _ in rows:
        print(f"{name:<12} {kind:<11} {parameters:>10,} {100 * accuracy:>7.1f}% {seconds:>7.1f}")
    print("saved: " + ", ".join(str(row[-1]) for row in rows))
    return 0


def train(head: nn.Module, store: FeatureStore, args: argparse.Namespace) -> float:
    """AdamW with a cosine schedule on the cached features; returns the seconds taken."""
    batch_size = min(args.batch_size, len(store))
    # drop_last: BatchNorm in the neck cannot train on a last batch of one crop.
    loader = FeatureDataset(store).loader(batch_size, shuffle=True, drop_last=True, seed=args.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))
    head.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        train_one_epoch(head, loader, optimizer, F.cross_entropy, scheduler=schedule)
    return time.perf_counter() - start


def evaluate(head: nn.Module, store: FeatureStore) -> float:
    """Top-1 accuracy on every sample of ``store``."""
    labels = store.labels(slice(None))
    prediction = predict(head, store.features(slice(None)))
    assert isinstance(labels, torch.Tensor)
    assert not isinstance(prediction, dict)
    return float((prediction.index == labels).float().mean())


if __name__ == "__main__":
    raise SystemExit(main())
