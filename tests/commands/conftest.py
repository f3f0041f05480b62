"""Tiny files for the command line: a backbone checkpoint, images, a manifest, saved heads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.export import save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

#: Small images: a 2x4 patch grid, so every backbone call is quick.
SIZE = (28, 56)


@dataclass(frozen=True)
class Files:
    checkpoint: Path  # a one-block, 64-wide backbone in the official layout
    other_checkpoint: Path  # the same architecture with other weights
    folder: Path  # one sub-folder per body type
    manifest: Path  # CSV with body, colour, orientation, brand; some cells empty
    images: list[Path]  # plain image files
    heads: Path  # a MultiHead saved for `checkpoint`, with class names


def tiny_backbone(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 64 wide with one head: load_backbone infers the head count as D / 64.
    return create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("cli")
    backbone = tiny_backbone(0)
    checkpoint = root / "tiny.pth"
    torch.save(backbone.state_dict(), checkpoint)
    other = root / "other.pth"
    torch.save(tiny_backbone(1).state_dict(), other)

    vehicles = SyntheticVehicles(8, seed=0, size=SIZE, num_brands=3, missing=0.25)
    folder = vehicles.write_folder(root / "by_body", label="body")
    manifest = vehicles.write_manifest(root / "attributes")
    images = sorted((manifest.parent / "images").glob("*.png"))[:3]

    frozen = FrozenBackbone(backbone)
    vocabularies = vehicles.vocabularies
    heads = MultiHead(
        {
            "colour": LinearHead(64, 8, class_names=vocabularies["colour"]),
            "brand": Conv1dNeck((2, 4), 64, 3, class_names=vocabularies["brand"]),
        }
    )
    saved = save_heads(
        root / "heads.pt",
        heads,
        backbone=frozen,
        input_size=SIZE,
        extra={"preprocessing": None},
    )
    return Files(checkpoint, other, folder, manifest, images, saved)


@dataclass(frozen=True)
class DenseFiles:
    segmentation: Path  # one LinearSegmentationHead of 5 parts, saved alone (as train does)
    depth: Path  # one LinearDepthHead, saved alone
    mixed: Path  # a MultiHead: a colour classifier, a parts segmentation head, a depth head
    dense_only: Path  # a MultiHead: the parts segmentation head and the depth head


@pytest.fixture(scope="session")
def dense_files(files: Files, tmp_path_factory: pytest.TempPathFactory) -> DenseFiles:
    """Heads files holding segmentation and depth heads for the conftest's backbone."""
    from dinov2_heads.checkpoints import load_backbone
    from dinov2_heads.demo import COLOURS, PARTS
    from dinov2_heads.heads import LinearDepthHead, LinearSegmentationHead

    root = tmp_path_factory.mktemp("dense-heads")
    backbone = load_backbone(files.checkpoint)
    torch.manual_seed(0)
    colour = LinearHead(64, len(COLOURS), class_names=list(COLOURS))
    parts = LinearSegmentationHead(64, len(PARTS), class_names=PARTS)
    depth = LinearDepthHead(64, n_bins=16, max_depth=10.0)

    def save(name: str, heads: torch.nn.Module) -> Path:
        frozen = FrozenBackbone.for_heads(backbone, heads)
        return save_heads(root / name, heads, backbone=frozen, input_size=SIZE)

    return DenseFiles(
        segmentation=save("parts.pt", parts),
        depth=save("depth.pt", depth),
        mixed=save("mixed.pt", MultiHead({"colour": colour, "parts": parts, "depth": depth})),
        dense_only=save("dense.pt", MultiHead({"parts": parts, "depth": depth})),
    )
