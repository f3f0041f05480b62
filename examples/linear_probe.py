"""Linear probe: image folder -> feature cache -> grid of linear heads -> the best head, saved.

The official DINOv2 linear evaluation, on your own folder of images (one sub-folder per class):
features are extracted once into a feature cache, a grid of linear heads (learning rates x last
blocks x avgpool) is trained on it in one pass, the best head on the validation split is saved
with its class names, and the script prints the accuracy table and writes a confusion matrix.

Run with no arguments to try it on synthetic vehicles (their colour as the class):

    python examples/linear_probe.py
    python examples/linear_probe.py --images flowers/ --checkpoint dinov2_vits14_pretrain.pth
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Subset

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureDataset, extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import ImageFolderDataset, get_preset
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.export import load_heads, save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import predict
from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", help="folder with one sub-folder per class (default: synthetic)"
    )
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument("--out", help="folder for the results (default: a new temporary folder)")
    parser.add_argument(
        "--preset",
        help="preprocessing preset (default: official_eval for your "
        "images, vehicle_crop for the synthetic ones)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.25, help="images held out")
    parser.add_argument(
        "--n-blocks",
        type=int,
        nargs="+",
        default=[1, 4],
        help="the 'last n blocks' options of the grid",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=160, help="synthetic images to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="linear_probe_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. The images: yours, or synthetic vehicles written as a folder per colour.
    if args.images:
        folder, preset = Path(args.images), args.preset or "official_eval"
    else:
        vehicles = SyntheticVehicles(args.num_images, seed=args.seed)
        folder, preset = vehicles.write_folder(out / "images", label="colour"), "vehicle_crop"
        preset = args.preset or preset
        print(f"wrote {args.num_images} synthetic vehicles to {folder} (class = colour)")
    transform = get_preset(preset)
    dataset = ImageFolderDataset(folder, transform, on_error="skip")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    num_val = max(1, round(args.val_fraction * len(dataset)))
    val_split, train_split = order[:num_val].tolist(), order[num_val:].tolist()
    print(
        f"{len(dataset.classes)} classes, {len(train_split)} training and {num_val} validation "
        f"images, preprocessing {preset!r}"
    )

    # 2. A frozen backbone that returns the last max(n_blocks) blocks.
    depth = max(args.n_blocks)
    # Seeds the random backbone and the grid's initial weights: the same --seed, the same run.
    torch.manual_seed(args.seed)
    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        backbone = create_backbone("dinov2_vits14", **{**RANDOM_BACKBONE, "depth": max(2, depth)})
        print("backbone: RANDOM weights (pass --checkpoint for real DINOv2 features)")
    frozen = FrozenBackbone(backbone, n_last_blocks=depth)

    # 3. Extract once: pooled features (class tokens + mean patch token) are all linear heads need.
    stores = {
        name: extract_features(
            frozen,
            Subset(dataset, split),
            path=out / "features" / name,
            preprocessing=transform,
        )
        for name, split in (("train", train_split), ("val", val_split))
    }
    print(stores["train"])

    # 4. The grid: every learning rate x n_blocks x avgpool, trained together from the cache.
    grid = LinearProbeGrid(
        backbone.embed_dim,
        len(dataset.classes),
        n_blocks=args.n_blocks,
        class_names=dataset.classes,
    )
    batch_size = min(args.batch_size, len(train_split))
    fit_grid(
        grid,
        FeatureDataset(stores["train"]),
        epochs=args.epochs,
        batch_size=batch_size,
        seed=args.seed,
    )
    results = evaluate_grid(grid, FeatureDataset(stores["val"]))
    print(f"\nvalidation accuracy of the {len(grid)} heads (best 10):")
    print(results.table(top=10))

    # 5. The best head as a plain LinearHead, saved with its class names and backbone identity.
    best = grid.best(results)
    accuracy = results.best.accuracy
    head_path = save_heads(
        out / "best_head.pt",
        best,
        backbone=frozen,
        input_size=transform.output_size,
        extra={"preprocessing": preset, "val_accuracy": accuracy, "grid_head": results.best.name},
    )
    print(
        f"\nbest: {results.best.name}, {100 * accuracy:.1f}% "
        f"(chance {100 / len(dataset.classes):.1f}%)"
    )

    # 6. The confusion matrix of the saved head (reloaded, as a deployment would).
    head = load_heads(head_path).heads
    assert head is not None
    features, labels = stores["val"].features(slice(None)), stores["val"].labels(slice(None))
    prediction = predict(head, features)
    assert not isinstance(prediction, dict)
    matrix = confusion_matrix(labels, prediction.index, len(dataset.classes))
    title = f"{results.best.name} on {int(matrix.sum())} validation images"
    picture = plot_confusion(out / "confusion.png", matrix, dataset.classes, title)
    shown = f", {picture} (its confusion matrix)" if picture is not None else ""
    print(f"files: {head_path} (the best head){shown}, {out / 'features'} (the cache)")
    return 0


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = labels.long() * classes + predicted.long()
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def plot_confusion(
    path: Path, matrix: torch.Tensor, names: tuple[str, ...], title: str
) -> Path | None:
    """Write the confusion matrix as a PNG with counts in the cells, if matplotlib is here.

    Without matplotlib the picture is skipped with a note (the rest of the run stands).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("skipped the confusion matrix picture: it needs matplotlib (pip install matplotlib)")
        return None
    size = 1.2 + 0.45 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix: {title}\n(images per true and predicted class)", fontsize=9)
    for (row, col), count in zip(
        torch.cartesian_prod(torch.arange(len(names)), torch.arange(len(names))).tolist(),
        matrix.flatten().tolist(),
        strict=True,
    ):
        if count:
            axes.text(col, row, str(count), ha="center", va="center", fontsize=8)
    figure.colorbar(image, label="images")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
