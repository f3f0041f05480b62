"""k-NN, logistic regression and the linear grid on the same cached features, in one table.

The three ways DINOv2 reports a backbone: the official k-NN classifier (no training at all),
the official logistic regression (a convex fit, no learning rate to choose) and the official
grid of linear heads (SGD). Features are extracted once; each method then reads the same cache.

Run with no arguments to try it on synthetic vehicles (their colour as the class):

    python examples/heads_without_training.py
    python examples/heads_without_training.py --checkpoint dinov2_vits14_pretrain.pth \\
        --attribute body --num-images 600
"""

from __future__ import annotations

import argparse
import logging

import torch

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.demo import ATTRIBUTES, RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.neighbors import OFFICIAL_C, KnnClassifier, logistic_regression
from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument("--attribute", default="colour", choices=ATTRIBUTES, help="the class")
    parser.add_argument("--num-images", type=int, default=240, help="synthetic images to draw")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="images held out")
    parser.add_argument(
        "--c-every",
        type=int,
        default=4,
        help="try every n-th of the official 45 values of C (1: all of them)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=1000, help="L-BFGS iterations per C (official: 1000)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the linear grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    # 1. One extraction: class tokens and the mean patch token of every image, in memory.
    torch.manual_seed(args.seed)
    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE)
        print("backbone: RANDOM weights (pass --checkpoint for real DINOv2 features)")
    vehicles = SyntheticVehicles(args.num_images, seed=args.seed, missing=0.0)
    store = extract_features(FrozenBackbone(backbone), vehicles, batch_size=32)
    labels = store.labels(slice(None), args.attribute)
    assert isinstance(labels, torch.Tensor)
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(args.seed))
    held = max(1, round(args.val_fraction * len(store)))
    val, train = order[:held], order[held:]
    classes = vehicles.vocabularies[args.attribute]
    train_features, val_features = store.features(train), store.features(val)
    print(f"{len(train)} training and {held} validation images, {len(classes)} classes")

    rows: list[tuple[str, str, float]] = []
    # 2. k-NN: the official scoring, nothing trained.
    knn = KnnClassifier(train_features, labels[train], num_classes=len(classes), k=(1, 10, 20))
    scores = knn.evaluate(val_features, labels[val])
    rows += [("k-NN", f"k = {k}", scores.top1[k]) for k in scores.top1]

    # 3. Logistic regression: the official sweep over C, chosen on a held-out tenth.
    fitted = logistic_regression(
        train_features,
        labels[train],
        test_features=val_features,
        test_labels=labels[val],
        c_values=OFFICIAL_C[:: args.c_every],
        max_iter=args.max_iter,
        num_classes=len(classes),
        class_names=classes,
    )
    assert fitted.test_top1 is not None
    rows.append(("logistic regression", f"C = {fitted.best_c:.3g}", fitted.test_top1))

    # 4. The official grid of linear heads (learning rates x avgpool), best on the same split.
    train_store = FeatureStore.from_features(train_features, labels[train])
    val_store = FeatureStore.from_features(val_features, labels[val])
    grid = LinearProbeGrid(backbone.embed_dim, len(classes), n_blocks=(1,))
    fit_grid(grid, FeatureDataset(train_store), epochs=args.epochs, batch_size=32, seed=args.seed)
    results = evaluate_grid(grid, FeatureDataset(val_store))
    rows.append(("linear grid", results.best.name, 100.0 * results.best.accuracy))

    print(f"\n{'method':<20}  {'setting':<44}  {'top-1 %':>7}")
    for method, setting, accuracy in rows:
        print(f"{method:<20}  {setting:<44}  {accuracy:>7.1f}")
    print(f"\nchance: {100 / len(classes):.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
