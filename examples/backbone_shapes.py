"""Build a small random DINOv2 backbone and print the shapes of its features.

Run: ``python examples/backbone_shapes.py [--variant dinov2_vits14_reg] [--depth 2]``
"""

from __future__ import annotations

import argparse

import torch

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="dinov2_vits14", choices=list_variants())
    parser.add_argument("--depth", type=int, default=2, help="blocks to build (small = fast)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    backbone = create_backbone(args.variant, depth=args.depth)
    print(f"{args.variant}, {args.depth} blocks, random weights (pass checkpoint= for real ones)")
    for height, width in [(224, 224), (126, 252)]:
        images = torch.randn(2, 3, height, width)
        with torch.no_grad():
            out = backbone.forward_features(images)
        shapes = {k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)}
        print(f"{height}x{width}: {shapes}")


if __name__ == "__main__":
    main()
