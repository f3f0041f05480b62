"""``dinov2-heads pca``: a PNG of images beside PCA pictures of their patch tokens."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common

if TYPE_CHECKING:
    from torch import Tensor, nn

EXAMPLE = """\
example:
  dinov2-heads pca --checkpoint dinov2_vitb14_pretrain.pth car1.jpg car2.jpg car3.jpg
  dinov2-heads pca --checkpoint dinov2_vits14_pretrain.pth --size 448 448 --out dogs.png dogs/
  dinov2-heads pca --checkpoint dinov2_vits14_pretrain.pth --preset vehicle_crop \\
      --foreground all crops/

All images go through one PCA, so the same part gets the same colour in every image: pass the
images you want to compare together. An existing --out file is replaced, as export and search
replace theirs; a folder as --out is refused before any work.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "pca",
        help="picture the patch tokens of images by a PCA (object coloured, background black)",
        description="Colour each patch token by a PCA of the patch tokens of all the images "
        "(the picture of the DINOv2 paper) and write the images beside their pictures as one "
        "PNG.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument(
        "--out", default="pca.png", help="the PNG to write (an existing file is replaced)"
    )
    _common.add_backbone_arguments(parser)
    _common.add_size_arguments(parser, default="official_eval")
    parser.add_argument(
        "--foreground",
        choices=("auto", "high", "low", "all"),
        default="auto",
        help="which side of the first component is the object: auto (the side the image "
        "borders lean away from), high, low, or all (no black background)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.3, help="foreground cut on the scaled first component"
    )
    parser.add_argument("--columns", type=_common.positive_int, default=2, help="pairs per row")
    parser.add_argument(
        "--upscale", choices=("nearest", "bilinear"), default="nearest", help="picture upscaling"
    )
    parser.add_argument(
        "--batch-size", type=_common.positive_int, default=32, help="images per backbone call"
    )
    _common.add_on_error_argument(parser)


def run(args: argparse.Namespace) -> int:
    from dinov2_heads.data import load_batch
    from dinov2_heads.viz import pca_caption, pca_foreground, pca_rgb, save_pca_grid

    _common.check_output_file(args.out, "pca.png")
    transform = _common.preprocessing(args, "official_eval")
    batch = load_batch(_common.image_paths(args.images), transform, on_error=args.on_error)
    backbone = _common.load_backbone(args)
    patch_tokens = last_patch_tokens(
        backbone, batch.images, batch_size=args.batch_size, show_progress=not args.quiet
    )  # (B, N, D)
    grid = transform.grid
    split = pca_foreground(patch_tokens, grid, threshold=args.threshold, foreground=args.foreground)
    pictures = pca_rgb(
        patch_tokens, grid, foreground_threshold=args.threshold, foreground=split.mask
    )
    path = save_pca_grid(
        args.out,
        batch.images,
        pictures,
        columns=args.columns,
        upscale=args.upscale,
        caption=pca_caption(background=split.side != "all"),
    )
    share = float(split.mask.float().mean())
    print(
        f"wrote {path}: {len(batch.paths)} image(s) at {transform.output_size[0]}x"
        f"{transform.output_size[1]} ({grid[0]}x{grid[1]} patches), foreground side "
        f"{split.side!r}, {100 * share:.0f}% of the patches coloured"
    )
    if batch.skipped:
        print(f"skipped {len(batch.skipped)} unreadable image(s), listed in the log")
    return 0


def last_patch_tokens(
    backbone: nn.Module, images: Tensor, *, batch_size: int, show_progress: bool = True
) -> Tensor:
    """The last block's patch tokens after the final norm: (B, 3, H, W) -> (B, N, D).

    Through :class:`~dinov2_heads.features.FrozenBackbone`, so a GPU run takes the fast modules
    of :mod:`dinov2_heads.accel`; on CPU these are the backbone's ``x_norm_patchtokens``, bit
    for bit. Runs ``batch_size`` images per call on the backbone's device; returns float32 on
    the CPU.
    """
    import torch

    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.progress import Progress

    frozen = FrozenBackbone(backbone)
    device = next(backbone.parameters()).device
    tokens = []
    count = images.shape[0]
    with Progress(count, "patch tokens", enabled=show_progress) as bar:
        for start in range(0, count, batch_size):
            chunk = images[start : start + batch_size]
            tokens.append(frozen(chunk.to(device)).patch_tokens[-1].cpu())
            bar.update(chunk.shape[0])
    return torch.cat(tokens)
