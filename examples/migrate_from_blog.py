"""Migrate the blog's three-head model (frozen DINOv2 + three Conv1d necks) and predict with it.

The widely copied blog recipe saves one state dict with the backbone twice (under ``base.`` and
again under ``feature_model.feature_model.``) and three necks under ``country_cls.``,
``cn_cls.`` and ``ct_cls.``. This script reads such a file, builds the same model from this
library's parts (``FrozenBackbone`` + ``MultiHead`` of ``Conv1dNeck``), copies every tensor
with ``load_partial`` (strict: nothing may be left out), prints the load report, predicts on
images, and saves the heads and the backbone in this library's formats.

Run with no arguments to try it on a stand-in file with the blog's key layout:

    python examples/migrate_from_blog.py
    python examples/migrate_from_blog.py --checkpoint blog_model.pth --images crops/ \\
        --class-names class_names.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.atomic import atomic_path
from dinov2_heads.checkpoints import (
    infer_config,
    load_partial,
    read_checkpoint_file,
    unwrap_state_dict,
)
from dinov2_heads.data import IMAGE_EXTENSIONS, Preprocess, load_batch
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticVehicles
from dinov2_heads.export import save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, MultiHead, predict

#: base.* -> frozen.*, the duplicate backbone is dropped, every other name goes under heads.
BLOG_RENAME: dict[str, str | None] = {"base.": "frozen.", "feature_model.": None, "": "heads."}
#: The stand-in's heads and class counts, as in the blog (country, brand, type).
STAND_IN_HEADS = {"country_cls": 12, "cn_cls": 31, "ct_cls": 6}


class BlogModel(nn.Module):
    """The blog's model rebuilt: a frozen backbone and a MultiHead of Conv1d necks."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.frozen = FrozenBackbone(backbone, n_last_blocks=1)
        self.heads = MultiHead(heads)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.heads(self.frozen(images))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the blog model's state dict (default: a stand-in)")
    parser.add_argument("--images", nargs="+", help="images or folders to predict on")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[126, 252],
        metavar=("H", "W"),
        help="the training input size (it fixes the necks' patch count)",
    )
    parser.add_argument("--class-names", help='JSON file {"country_cls": ["de", ...], ...}')
    parser.add_argument("--out", help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="migrate_from_blog_"))
    out.mkdir(parents=True, exist_ok=True)
    size = (args.size[0], args.size[1])
    grid = (size[0] // 14, size[1] // 14)

    path = Path(args.checkpoint) if args.checkpoint else make_stand_in(out / "blog.pth", grid)
    state = unwrap_state_dict(read_checkpoint_file(path), backbone=False).state_dict

    # The backbone's architecture from the shapes under base.; the heads' from theirs.
    backbone = DinoVisionTransformer(infer_config(strip(state, "base.")))
    heads: dict[str, nn.Module] = {}
    necks = [key.split(".")[0] for key in state if key.endswith(".conv1.conv.weight")]
    for name in dict.fromkeys(necks):  # in the file's order
        num_patches = state[f"{name}.conv1.conv.weight"].shape[0]
        if num_patches != grid[0] * grid[1]:
            raise SystemExit(
                f"{name} was trained on {num_patches} patch tokens but --size {size[0]} "
                f"{size[1]} gives {grid[0]}x{grid[1]} = {grid[0] * grid[1]}; pass the training size"
            )
        classes = state[f"{name}.linear.weight"].shape[0]
        heads[name] = Conv1dNeck(grid, backbone.embed_dim, classes)
    model = BlogModel(backbone, heads)

    report = load_partial(model, state, rename=BLOG_RENAME, strict=True)
    print(f"{path}: {report.summary()}")

    names = json.loads(Path(args.class_names).read_text()) if args.class_names else {}
    for name, head in model.heads.items():
        head.class_names = names.get(name) or [f"{name}_{i}" for i in range(head.num_classes)]

    transform = Preprocess(resize=size)
    if args.images:
        batch = load_batch(image_files(args.images), transform, on_error="skip")
        images, labels = batch.images, [str(p) for p in batch.paths]
    else:
        vehicles = SyntheticVehicles(4, seed=args.seed, size=size, transform=transform)
        images = torch.stack([vehicles[i][0] for i in range(len(vehicles))])
        labels = [f"synthetic vehicle {i}" for i in range(len(vehicles))]
    # Predict through the MultiHead: it carries the class names.
    predictions = predict(model.heads, model.frozen(images))
    assert isinstance(predictions, dict)
    print(f"\n{'image':<24} " + " ".join(f"{name:<18}" for name in predictions).rstrip())
    for index, label in enumerate(labels):
        cells = []
        for prediction in predictions.values():
            assert prediction.label is not None
            cells.append(f"{prediction.label[index]} {float(prediction.scores[index, 0]):.2f}")
        print(f"{label:<24} " + " ".join(f"{cell:<18}" for cell in cells).rstrip())

    heads_path = save_heads(
        out / "migrated_heads.pt",
        model.heads,
        backbone=model.frozen,
        input_size=size,
        extra={"migrated_from": str(path)},
    )
    backbone_path = out / "backbone.pth"
    with atomic_path(backbone_path) as temporary:  # a reader never sees half a file
        torch.save(backbone.state_dict(), temporary)
    print(f"\nsaved {heads_path} and {backbone_path} (official layout); next:")
    print(f"  dinov2-heads predict --heads {heads_path} --checkpoint {backbone_path} IMAGES")
    return 0


def strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix``, without it."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def image_files(inputs: list[str]) -> list[Path]:
    """Files as given, and the images inside folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files.append(item)
    return files


def make_stand_in(path: Path, grid: tuple[int, int]) -> Path:
    """A file with the blog model's key layout: random weights, a shrunk ViT-S/14."""
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE).state_dict()
    state = {f"base.{key}": value for key, value in backbone.items()}
    # The blog registers the same backbone again inside ModelWithIntermediateLayers.
    state |= {f"feature_model.feature_model.{key}": value for key, value in backbone.items()}
    for name, classes in STAND_IN_HEADS.items():
        neck = Conv1dNeck(grid, RANDOM_BACKBONE["embed_dim"], classes).state_dict()
        state |= {f"{name}.{key}": value for key, value in neck.items()}
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    print(f"wrote a stand-in blog checkpoint to {path} (random weights, the blog's key names)")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
