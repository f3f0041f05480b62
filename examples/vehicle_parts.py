"""Vehicle parts: a linear segmentation head on frozen patch tokens, trained and scored by mIoU.

Image + mask pairs (a folder of images and a folder of PNG masks of class indices, 255 for
"no label") are augmented together, a LinearSegmentationHead learns from the frozen backbone's
last-block patch tokens, and the script prints the validation IoU per class and mIoU, and writes
the head and an overlay picture.

Run with no arguments to try it on synthetic vehicles with their part masks (background, body,
windows, wheels, emblem):

    python examples/vehicle_parts.py
    python examples/vehicle_parts.py --images photos/ --masks masks/ --classes 5 \\
        --checkpoint dinov2_vits14_pretrain.pth

With --cache FOLDER the training images are not augmented: the backbone runs once over them,
the patch tokens the head reads and the masks go to a feature store in FOLDER (resumed if
interrupted, reused by the next run), and every epoch trains from it without the backbone. The
images must then share one size, with sides that are multiples of 14.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from dinov2_heads import create_backbone
from dinov2_heads.cache import extract_features
from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import SegmentationDataset, SegmentationTransform, denormalize
from dinov2_heads.demo import PART_PALETTE, PARTS, RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.dense import SegmentationLoss, SegmentationMetrics, Segmenter
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead
from dinov2_heads.training import features_of
from dinov2_heads.viz import overlay_labels
from dinov2_heads.viz.segmentation import save_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of images (default: synthetic vehicles)")
    parser.add_argument("--masks", help="folder of PNG masks named like the images")
    parser.add_argument("--classes", type=int, help="K, with --images (0..K-1 in the masks)")
    parser.add_argument("--checkpoint", help="DINOv2 backbone checkpoint (default: random weights)")
    parser.add_argument("--out", help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--crop", type=int, default=126, help="training crop side (x14)")
    parser.add_argument(
        "--cache", help="train without augmentation from a feature cache in this folder"
    )
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate")
    parser.add_argument("--num-images", type=int, default=60, help="synthetic images to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if bool(args.images) != bool(args.masks) or (args.images and not args.classes):
        parser.error("--images needs --masks and --classes")
    out = Path(args.out or tempfile.mkdtemp(prefix="vehicle_parts_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    if args.images:
        images, masks = Path(args.images), Path(args.masks)
        names: tuple[str, ...] = tuple(f"class {k}" for k in range(args.classes))
        palette = [((37 * k) % 256, (91 * k) % 256, (173 * k) % 256) for k in range(args.classes)]
    else:
        root = SyntheticVehicles(args.num_images, seed=args.seed).write_parts(out / "parts")
        images, masks, names, palette = root / "images", root / "masks", PARTS, list(PART_PALETTE)
        print(f"wrote {args.num_images} synthetic vehicles and part masks to {root}")
    augment = SegmentationTransform(
        crop_size=(args.crop, args.crop), scale_range=(0.75, 1.5), flip=0.5, seed=args.seed
    )
    # A cache holds one view per image: no random crops, scales or flips then.
    train_transform = SegmentationTransform() if args.cache else augment
    train_set = SegmentationDataset.from_folders(images, masks, train_transform)
    val_set = SegmentationDataset.from_folders(images, masks)  # whole images, no augmentation
    count = len(train_set)
    val_count = max(1, round(args.val_fraction * count))
    order = torch.randperm(count).tolist()
    train, val = Subset(train_set, order[val_count:]), Subset(val_set, order[:val_count])

    if args.checkpoint:
        backbone = load_backbone(args.checkpoint)
    else:
        backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE)
        print("backbone: random weights (pass --checkpoint for real features)")
    head = LinearSegmentationHead(backbone.embed_dim, len(names), class_names=names)
    frozen = FrozenBackbone.for_heads(backbone, head)

    if args.cache:
        # The blocks the head reads and the uint8 masks, extracted once (or found done).
        store = extract_features(
            frozen, train, path=args.cache, preprocessing=train_transform, progress=False
        )
        print(f"training from {store}")
        loader = store.dataset(heads=head).loader(
            args.batch_size, shuffle=True, drop_last=True, seed=args.seed
        )
    else:
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)

    loss_fn = SegmentationLoss()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    for epoch in range(args.epochs):
        head.train()
        total = 0.0
        for batch_inputs, batch_masks in loader:
            # Images go through the frozen backbone; cached batches already hold Features.
            loss = loss_fn(head(features_of(batch_inputs, frozen)), batch_masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / max(1, len(loader)):.4f}")

    segmenter = Segmenter(frozen, head.eval()).eval()  # pads any size to a multiple of 14
    metrics = SegmentationMetrics(len(names), class_names=names)
    with torch.no_grad():
        for image, mask in val:
            prediction = segmenter.predict(image[None])
            metrics.update(prediction, mask[None])
    scores = metrics.compute()
    print(f"\nvalidation ({len(val)} images):")
    print(scores)

    torch.save(head.state_dict(), out / "parts_head.pt")
    image, _ = val[0]
    with torch.no_grad():
        labels = segmenter.predict(image[None])[0]
    save_image(overlay_labels(denormalize(image), labels, palette), out / "overlay.png")
    print(f"saved {out / 'parts_head.pt'} and {out / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
