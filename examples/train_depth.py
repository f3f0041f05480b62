"""Train a depth head on a frozen DINOv2 backbone, offline: image + depth pairs -> metres.

A linear (or DPT) depth head learns from pairs of images and depth maps while the backbone
stays frozen; the script prints the standard depth metrics on held-out pairs, as they are and
with median scaling (the scene's layout without its overall scale), next to a constant-depth
baseline, writes a colour-mapped prediction with its colour bar, and saves the head. With no
arguments it uses synthetic street scenes (a ground plane and a vehicle) and a small random
backbone, so it runs anywhere in seconds; random features learn the layout quickly but the
overall scale slowly, which real DINOv2 weights (--checkpoint) and longer training fix:

    python examples/train_depth.py
    python examples/train_depth.py --images nyu/rgb --depths nyu/depth --scale nyu \
        --checkpoint dinov2_vits14_pretrain.pth --head linear4 --max-depth 10

With --cache FOLDER the training pairs are not augmented (no crop, flip or colour jitter): the
backbone runs once, the blocks the head reads and the depth maps go to a feature store in
FOLDER, and every epoch trains from it without the backbone (the images must share one size).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from dinov2_heads import create_backbone
from dinov2_heads.cache import extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import DepthDataset, DepthTransform
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.dense import Depther
from dinov2_heads.export import load_heads, save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import DepthLoss, DPTDepthHead, LinearDepthHead
from dinov2_heads.training import DEPTH_METRICS, DepthMetrics, features_of
from dinov2_heads.viz import save_depth_picture


def build_head(kind: str, embed_dim: int, max_depth: float) -> nn.Module:
    if kind == "dpt":
        return DPTDepthHead(embed_dim, channels=64, max_depth=max_depth)
    return LinearDepthHead(embed_dim, layers=4 if kind == "linear4" else 1, max_depth=max_depth)


def evaluate(
    predict: Callable[[Tensor], Tensor], loader: DataLoader, max_depth: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics of ``predict`` on ``loader``: as they are, and with median scaling."""
    plain = DepthMetrics(max_depth=max_depth)
    scaled = DepthMetrics(max_depth=max_depth, median_scaling=True)
    with torch.no_grad():
        for images, depths in loader:
            predicted = predict(images)
            plain.update(predicted, depths)
            scaled.update(predicted, depths)
    return plain.compute(), scaled.compute()


def median_depth(pairs: Dataset) -> float:
    """The median of every valid depth in ``pairs``: the constant baseline's prediction."""
    loader = DataLoader(pairs, batch_size=16)
    return float(torch.cat([depths[depths > 0] for _, depths in loader]).median())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of images (default: synthetic scenes)")
    parser.add_argument("--depths", help="folder of depth maps named like the images")
    parser.add_argument(
        "--scale", default=None, help="depth PNG values per metre: nyu, kitti or a number"
    )
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument("--head", choices=["linear", "linear4", "dpt"], default="linear")
    parser.add_argument("--max-depth", type=float, default=20.0, help="metres; the bins' top")
    parser.add_argument("--crop", type=int, nargs=2, default=None, help="training crop H W")
    parser.add_argument(
        "--cache", help="train without augmentation from a feature cache in this folder"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--warm-up", type=int, default=0, help="SigLoss warm-up steps")
    parser.add_argument("--num-images", type=int, default=32, help="synthetic pairs to draw")
    parser.add_argument("--size", type=int, nargs=2, default=(56, 112), help="synthetic H W")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--out", help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="train_depth_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # 1. Pairs: yours (16-bit PNG with a scale, or .npy metres), or synthetic street scenes.
    crop = tuple(args.crop) if args.crop else None
    train_transform = DepthTransform(crop_size=crop, seed=args.seed)  # crop, flip, colour
    if args.cache:
        if crop:
            parser.error("--cache keeps one view per image: leave out --crop")
        train_transform = DepthTransform.evaluation()  # the image normalised, nothing random
    if args.images:
        if not args.depths:
            parser.error("--images needs --depths")
        train_set: Dataset = DepthDataset.from_folders(
            args.images, args.depths, scale=args.scale, transform=train_transform
        )
        val_set: Dataset = DepthDataset.from_folders(args.images, args.depths, scale=args.scale)
    else:
        vehicles = SyntheticVehicles(args.num_images, seed=args.seed, size=tuple(args.size))
        train_set = SyntheticDepthPairs(vehicles, train_transform)
        val_set = SyntheticDepthPairs(vehicles)
        print(f"{args.num_images} synthetic scenes of {args.size[0]}x{args.size[1]} pixels")
    order = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(args.seed))
    num_val = max(1, round(args.val_fraction * len(order)))
    train = Subset(train_set, order[num_val:].tolist())
    val = Subset(val_set, order[:num_val].tolist())
    val_loader = DataLoader(val, batch_size=args.batch_size)
    print(f"{len(train)} training and {len(val)} validation pairs")

    # 2. The frozen backbone, extracting exactly the blocks the head reads (norm off).
    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        backbone = create_backbone("dinov2_vits14", **{**RANDOM_BACKBONE, "depth": 4})
        print("backbone: RANDOM weights (pass --checkpoint for real DINOv2 features)")
    head = build_head(args.head, backbone.embed_dim, args.max_depth)
    frozen = FrozenBackbone.for_heads(backbone, head)
    depther = Depther(frozen, head)
    print(f"head: {type(head).__name__} on blocks {[i for i, _ in frozen.blocks]}")
    if args.cache:
        # The head's blocks and the depth maps (float16 metres), extracted once or found done.
        store = extract_features(frozen, train, path=args.cache, progress=False)
        print(f"training from {store}")
        train_loader = store.dataset(heads=head).loader(args.batch_size, shuffle=True)
    else:
        train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)

    # 3. Train the head: SigLoss + 0.5 x gradient loss on the prediction resized to the target.
    loss_fn = DepthLoss(max_depth=args.max_depth, warm_up_steps=args.warm_up)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        head.train()
        loss_fn.train()
        total, batches = 0.0, 0
        for inputs, depths in train_loader:
            # Images go through the frozen backbone; cached batches already hold Features.
            loss = loss_fn(head(features_of(inputs, frozen)), depths).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        print(f"epoch {epoch}: loss {total / batches:.4f}")

    # 4. Held-out metrics, whole-image inference as the official evaluation, against a
    # constant prediction (the median training depth everywhere).
    depther.eval()
    results, scaled = evaluate(depther, val_loader, args.max_depth)
    median = median_depth(train)
    baseline, baseline_scaled = evaluate(
        lambda x: torch.full_like(x[:, :1], median), val_loader, args.max_depth
    )
    print(
        f"\n{'metric':<9} {'head':>8} {'constant':>9} "
        f"{'head, median-scaled':>20} {'constant, median-scaled':>24}"
    )
    for name in DEPTH_METRICS:
        print(
            f"{name:<9} {results[name]:>8.3f} {baseline[name]:>9.3f} "
            f"{scaled[name]:>20.3f} {baseline_scaled[name]:>24.3f}"
        )

    # 5. A picture of one held-out prediction, and the head saved and reloaded.
    image, depth = val[0]
    with torch.no_grad():
        predicted = depther(image[None])
    picture = save_depth_picture(out / "prediction.png", predicted, image)
    save_depth_picture(out / "ground_truth.png", depth, image)
    head_path = save_heads(
        out / "depth_head.pt", head, backbone=frozen, extra={"metrics": results, "scaled": scaled}
    )
    reloaded = load_heads(head_path).heads  # rebuilt from the file alone
    assert isinstance(reloaded, type(head))
    print(f"\nfiles: {picture}, {out / 'ground_truth.png'}, {head_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
