"""``dinov2-heads search``: the stored images most like each query image, and a contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common

if TYPE_CHECKING:
    from torch import Tensor

    from dinov2_heads.cache import FeatureStore
    from dinov2_heads.data import Preprocess

EXAMPLE = """\
example:
  dinov2-heads extract --checkpoint dinov2_vits14_pretrain.pth --out features/catalogue catalogue/
  dinov2-heads search features/catalogue query.jpg --checkpoint dinov2_vits14_pretrain.pth
  dinov2-heads search features/catalogue crops/ --checkpoint dinov2_vits14_pretrain.pth \\
      -k 8 --pooling class+patch_mean --out similar.png

STORE is a feature store written by `dinov2-heads extract` with the same checkpoint; the query
images are prepared as the store's images were (its preset or size, found from the store unless
--preset or --size is given). Image paths come from the dataset.json beside the store.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the stored images most similar to query images (cosine, exact)",
        description="Embed query images with the backbone, find the k most similar samples of a "
        "feature store (exact cosine similarity, the store read in chunks), print them and "
        "write a contact sheet (each query beside its neighbours).\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("store", metavar="STORE", help="the feature store folder to search")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image files or folders")
    parser.add_argument("-k", type=_common.positive_int, default=5, help="neighbours per query")
    parser.add_argument("--out", default="search.png", help="the contact sheet to write")
    _common.add_backbone_arguments(parser)
    _common.add_size_arguments(
        parser, default=None, default_text="as the store's images were: its preset or size"
    )
    parser.add_argument(
        "--pooling",
        choices=("class", "patch_mean", "class+patch_mean"),
        default="class",
        help="the vector compared: the class token, the mean patch token, or both",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "faiss"),
        default="torch",
        help="torch: exact (the reference); faiss: a faiss index (pip install faiss-cpu)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_common.positive_int,
        default=65_536,
        help="stored samples compared at once (bounds memory)",
    )
    parser.add_argument(
        "--batch-size", type=_common.positive_int, default=32, help="queries per backbone call"
    )
    _common.add_on_error_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from dinov2_heads.cache import FeatureStore
    from dinov2_heads.data import load_batch
    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.fingerprint import weights_fingerprint
    from dinov2_heads.neighbors import NearestNeighbors
    from dinov2_heads.neighbors.pooling import pool
    from dinov2_heads.viz import contact_sheet_caption, save_contact_sheet

    _common.check_output_file(args.out, "search.png")
    backbone = _common.load_backbone(args)
    store = FeatureStore.open(args.store, backbone=weights_fingerprint(backbone))
    transform = _store_preprocessing(args, store)
    batch = load_batch(_common.image_paths(args.images), transform, on_error=args.on_error)
    frozen = FrozenBackbone(backbone)
    device = next(backbone.parameters()).device
    vectors = []
    for start in range(0, batch.images.shape[0], args.batch_size):
        chunk = batch.images[start : start + args.batch_size].to(device)
        vectors.append(pool(frozen(chunk), args.pooling))
    queries = torch.cat(vectors)  # (B, D)

    search = NearestNeighbors(
        store,
        pooling=args.pooling,
        chunk_size=args.chunk_size,
        backend=args.backend,
        device=device,
    )
    result = search.search(queries, k=args.k)
    for index, path in enumerate(batch.paths):
        print(f"query {path}")
        print(result.table(index))

    neighbors: list[list[Tensor | None]] = []
    missing = 0
    for index in range(len(result)):
        row = [_image(n.path, transform) for n in result.neighbors(index)]
        missing += sum(image is None for image in row)
        neighbors.append(row)
    labels = [
        [f"#{n.sample_id} {Path(n.path).name if n.path else ''}" for n in result.neighbors(i)]
        for i in range(len(result))
    ]
    out = save_contact_sheet(
        args.out,
        batch.images,
        neighbors,
        result.similarities,
        labels=labels,
        query_labels=[Path(p).name for p in batch.paths],
        caption=contact_sheet_caption(args.k, what=f"{args.pooling} features", missing=missing > 0),
    )
    print(f"wrote {out}: {len(batch.paths)} query image(s), {args.k} neighbours each")
    if search.paths is None:
        print(f"  the store has no image paths ({Path(args.store) / 'dataset.json'}): grey tiles")
    elif missing:
        print(f"  {missing} neighbour image(s) could not be read: grey tiles")
    if batch.skipped:
        print(f"skipped {len(batch.skipped)} unreadable query image(s), listed in the log")
    return 0


def _store_preprocessing(args: argparse.Namespace, store: FeatureStore) -> Preprocess:
    """``--preset`` / ``--size`` checked against the store, else the store's own preprocessing.

    Queries must be prepared as the stored images were, or their features are not comparable.
    """
    from dinov2_heads.cache import StoreMismatchError
    from dinov2_heads.data import Preprocess, get_preset, list_presets

    named = _named_preset(store)
    if args.preset is not None or args.size is not None:
        transform = _common.preprocessing(args, "official_eval")
        # The store may have been extracted with JPEG draft decoding (extract's default).
        drafted = transform.replace(draft=True)
        if _prepares(store, drafted):
            return drafted
        if named is not None and named.description() == transform.description():
            return transform
        try:
            store.check(preprocessing=transform)
        except StoreMismatchError as error:
            detail = str(error).split("; extract again")[0]
            raise ValueError(
                "--preset / --size must prepare the queries as the stored images were: "
                f"{detail}; leave both out to use the store's own preprocessing"
            ) from None
        return transform
    if named is not None:
        return named
    candidates = [get_preset(name) for name in list_presets()]
    if store.input_size is not None:
        candidates.append(Preprocess.for_size(store.input_size))
    candidates += [candidate.replace(draft=True) for candidate in candidates]
    for candidate in candidates:
        if _prepares(store, candidate):
            return candidate
    raise ValueError(
        f"the preprocessing of the feature store at {args.store} is not a preset or a plain "
        "resize; pass the --preset or --size its images were extracted with"
    )


def _named_preset(store: FeatureStore) -> Preprocess | None:
    """The preset a store records by its name (the demo's stores do), else ``None``."""
    from dinov2_heads.data import get_preset, list_presets

    recorded = store.manifest.preprocessing
    if isinstance(recorded, str) and recorded in list_presets():
        return get_preset(recorded)
    return None


def _prepares(store: FeatureStore, transform: Preprocess) -> bool:
    """Whether ``store`` records ``transform`` as its preprocessing."""
    from dinov2_heads.cache import StoreMismatchError

    try:
        store.check(preprocessing=transform)
    except StoreMismatchError:
        return False
    return True


def _image(path: str | None, transform: Preprocess) -> Tensor | None:
    """A stored image prepared like the queries, or ``None`` when it cannot be read."""
    from dinov2_heads.data import UnreadableImageError, load_image

    if path is None:
        return None
    try:
        return transform(load_image(path))
    except (UnreadableImageError, OSError):
        return None
