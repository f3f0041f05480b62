"""PCA picture of patch tokens: each image beside its features coloured by a joint PCA.

The first principal component of the patch tokens separates object from background; three
more components over the foreground patches of all images become R, G and B, so the same part
(wheels, windows, lights) gets the same colour in every image. Background patches are black.

Run with no arguments to picture synthetic vehicles (with random weights the colours follow
little more than the pixel colours; real weights show the parts):

    python examples/pca_features.py
    python examples/pca_features.py --checkpoint dinov2_vitb14_pretrain.pth --size 448 448 \\
        --images dog1.jpg dog2.jpg dog3.jpg dog4.jpg
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import Preprocess, load_batch
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.viz import pca_caption, pca_foreground, pca_rgb, save_pca_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", help="image files (default: synthetic vehicles)")
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[126, 252],
        metavar=("H", "W"),
        help="resize to H x W (rounded to multiples of 14)",
    )
    parser.add_argument(
        "--foreground",
        choices=("auto", "high", "low", "all"),
        default="auto",
        help="which side of the first component is the object",
    )
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--num-images", type=int, default=6, help="synthetic images to draw")
    parser.add_argument("--out", help="the PNG to write (default: in a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pca_")) / "pca.png"

    transform = Preprocess.for_size((args.size[0], args.size[1]))
    if args.images:
        batch = load_batch(args.images, transform, on_error="skip")
        images = batch.images
    else:
        vehicles = SyntheticVehicles(args.num_images, seed=args.seed, transform=transform)
        images = torch.stack([vehicles[i][0] for i in range(len(vehicles))])

    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE)
        print("backbone: RANDOM weights (pass --checkpoint for the pictures DINOv2 is known for)")
    with torch.no_grad():
        tokens = backbone.forward_features(images)["x_norm_patchtokens"]  # (B, N, D)

    grid = transform.grid
    split = pca_foreground(tokens, grid, threshold=args.threshold, foreground=args.foreground)
    pictures = pca_rgb(tokens, grid, foreground=split.mask)  # (B, h, w, 3), background 0
    # The caption under the picture says what the colours mean (and, for random weights, that
    # they follow the pixels' colours).
    caption = pca_caption(random_weights=not args.checkpoint, background=split.side != "all")
    path = save_pca_grid(out, images, pictures, columns=2, caption=caption)
    print(
        f"{len(images)} images at {transform.output_size[0]}x{transform.output_size[1]}, "
        f"{grid[0]}x{grid[1]} patches; foreground side {split.side!r}, "
        f"{100 * float(split.mask.float().mean()):.0f}% of the patches coloured"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
