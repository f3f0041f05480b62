"""The one-command demo: synthetic vehicles, a frozen backbone, a feature cache and four heads.

:func:`run_demo` does the main job of the library end to end on data it draws itself, so it
needs no files and no downloads:

1. a small synthetic "vehicles" set (:class:`~dinov2_heads.demo.SyntheticVehicles`): a
   training part with a share of its labels blanked (missing annotations) and a held-out part;
2. a frozen backbone: the weights of ``checkpoint``, or a randomly initialised one shrunk to a
   few blocks so that the demo runs in a minute or two on a laptop CPU;
3. features extracted once into a feature cache on disk (``features/`` under ``out``, with
   a progress bar), which ``dinov2-heads train`` can train more heads from;
4. a :class:`~dinov2_heads.heads.MultiHead` trained from the cache: linear heads for the body
   type, colour and orientation, a :class:`~dinov2_heads.heads.Conv1dNeck` for the brand
   emblem (a detail about one patch wide, which needs the patch tokens);
5. held-out accuracy per head, next to chance level, and files under ``out``: the heads with
   their class names, the backbone weights (random ones only), a PCA picture of a few held-out
   images, sample images, a JSON of the results, and the images behind the cache with a
   manifest of their labels (``data/``, which ``dinov2-heads search`` shows).

With random weights the numbers show that the pipeline works, not what DINOv2 features can do;
real use passes the path of an official checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from dinov2_heads.atomic import atomic_path, atomic_write_bytes
from dinov2_heads.backbone import DinoVisionTransformer, get_config
from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features, remove_store
from dinov2_heads.checkpoints import create_backbone
from dinov2_heads.checkpoints.record import CHECKPOINT_KEY, checkpoint_record
from dinov2_heads.demo.synthetic import SyntheticVehicles
from dinov2_heads.export import save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead, MultiHeadLoss, predict
from dinov2_heads.neighbors.image_paths import DATASET_FILE
from dinov2_heads.progress import Progress

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_VARIANT",
    "IMAGE_SIZE",
    "RANDOM_BACKBONE",
    "DemoResults",
    "HeadResult",
    "fresh_directory",
    "run_demo",
]

#: Where the demo writes when no folder is given (``-2``, ``-3``, ... if it exists).
DEFAULT_OUT = "dinov2-heads-demo"
#: The backbone family used without a checkpoint.
DEFAULT_VARIANT = "dinov2_vits14"
#: The vehicle-crop input size (H, W): a 9x18 patch grid.
IMAGE_SIZE = (126, 252)
#: How the random backbone is shrunk (the official ViT-S/14 has 12 blocks of width 384).
RANDOM_BACKBONE: dict[str, int] = {"depth": 2, "embed_dim": 128, "num_heads": 2}
#: The linear heads, and the head that reads the patch tokens through a Conv1d neck.
LINEAR_HEADS = ("body", "colour", "orientation")
NECK_HEAD = "brand"
#: The file names the demo writes inside its folder.
FILES = {
    "heads": "heads.pt",
    "backbone": "backbone.pth",
    "pca": "pca.png",
    "results": "results.json",
    "samples": "samples",
    "features": "features",
    "data": "data",
}

Echo = Callable[[str], None]


@dataclass(frozen=True)
class HeadResult:
    """Held-out accuracy of one head.

    Attributes:
        name: The head's name (the label it predicts).
        kind: ``"LinearHead"`` or ``"Conv1dNeck"``.
        num_classes: K.
        accuracy: Top-1 accuracy on the held-out images, in [0, 1].
        chance: 1 / K, the accuracy of guessing.
        correct: Held-out images predicted right.
        count: Held-out images with this label.
        train_labels: Training images that had this label (the rest were blanked).
    """

    name: str
    kind: str
    num_classes: int
    accuracy: float
    chance: float
    correct: int
    count: int
    train_labels: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "accuracy": self.accuracy,
            "chance": self.chance,
            "correct": self.correct,
            "count": self.count,
            "train_labels": self.train_labels,
        }


@dataclass(frozen=True)
class DemoResults:
    """What :func:`run_demo` did and measured.

    Attributes:
        heads: Held-out results per head, in head order.
        out: The folder the files went to.
        files: What was written: ``heads``, ``backbone`` (random weights only), ``pca``,
            ``results``, ``samples`` (a folder), ``features`` (a folder holding the
            feature stores ``train`` and ``heldout``, each with the ``dataset.json`` that
            ``dinov2-heads extract`` writes) and ``data`` (a folder holding ``train`` and
            ``heldout``, each the images of its store and their ``manifest.csv``), as paths.
        backbone: A one-line description of the backbone.
        random_weights: Whether the backbone was randomly initialised.
        checkpoint: The checkpoint the backbone came from, or ``None``.
        variant: The official variant name of the backbone, or ``None`` for a custom (shrunk)
            architecture.
        backbone_config: The backbone's configuration.
        image_size: The input size (H, W).
        num_train: Training images.
        num_heldout: Held-out images.
        epochs: Training epochs over the cached features.
        seed: The seed everything random was drawn from.
        missing: The share of training labels blanked per head.
        seconds: Wall-clock time per stage (``features``, ``training``, ``evaluation``,
            ``files``) and ``total``.
    """

    heads: tuple[HeadResult, ...]
    out: Path
    files: dict[str, Path]
    backbone: str
    random_weights: bool
    checkpoint: Path | None
    variant: str | None
    backbone_config: dict[str, Any]
    image_size: tuple[int, int]
    num_train: int
    num_heldout: int
    epochs: int
    seed: int
    missing: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        """Head name -> held-out accuracy."""
        return {head.name: head.accuracy for head in self.heads}

    def table(self) -> str:
        """The held-out accuracy per head beside chance level, as aligned text."""
        width = max(len("head"), *(len(head.name) for head in self.heads))
        lines = [f"{'head':<{width}}  {'type':<10}  {'classes':>7}  {'accuracy':>8}  {'chance':>6}"]
        for head in self.heads:
            lines.append(
                f"{head.name:<{width}}  {head.kind:<10}  {head.num_classes:>7}  "
                f"{100 * head.accuracy:>7.1f}%  {100 * head.chance:>5.1f}%"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``results.json`` holds)."""
        return {
            "heads": [head.to_dict() for head in self.heads],
            "accuracy": self.accuracy,
            "backbone": {
                "description": self.backbone,
                "random_weights": self.random_weights,
                "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None,
                "variant": self.variant,
                "config": self.backbone_config,
            },
            "data": {
                "image_size": list(self.image_size),
                "num_train": self.num_train,
                "num_heldout": self.num_heldout,
                "missing": self.missing,
            },
            "epochs": self.epochs,
            "seed": self.seed,
            "seconds": dict(self.seconds),
            "files": {name: str(path) for name, path in self.files.items()},
        }


def fresh_directory(base: str | os.PathLike[str] = DEFAULT_OUT) -> Path:
    """``base`` if it does not exist or is empty, else the first free ``base-2``, ``base-3``...

    Nothing is created.
    """
    candidate = Path(base)
    number = 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = Path(f"{base}-{number}")
    return candidate


def run_demo(
    out: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    seed: int = 0,
    num_train: int = 400,
    num_heldout: int = 160,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    num_brands: int = 4,
    missing: float = 0.25,
    random_backbone: Mapping[str, Any] | None = None,
    num_samples: int = 8,
    progress: bool = True,
    echo: Echo | None = None,
) -> DemoResults:
    """Train four heads on synthetic vehicles and report their held-out accuracy.

    The steps are described in the module docstring. Everything random (the backbone's
    initial weights, the heads' initial weights, the data order, dropout) is drawn from
    ``seed`` inside a forked random state, so two runs with the same arguments give the same
    numbers and the caller's global random state is left as it was.

    Args:
        out: The folder for the files; created if needed. It must be empty or hold an earlier
            demo's files (which are replaced). ``None``: a fresh ``./dinov2-heads-demo``
            (see :func:`fresh_directory`).
        checkpoint: A DINOv2 backbone checkpoint (any format :func:`~dinov2_heads.checkpoints.
            load_backbone` reads); ``None`` uses random weights.
        variant: With ``checkpoint``, the official name to check its weights against (``None``:
            inferred from the weights). Without, the architecture family of the random backbone
            (default ``"dinov2_vits14"``), shrunk by ``random_backbone``.
        seed: The seed of everything random, and of the synthetic images.
        num_train: Training images (a share ``missing`` of each label blanked).
        num_heldout: Held-out images (every label known), drawn after the training ones.
        epochs: Passes over the cached training features.
        batch_size: Training batch size.
        learning_rate: AdamW learning rate, annealed to 0 by a cosine schedule.
        num_brands: Brands (emblem shapes) to tell apart, 2 to 12.
        missing: Share of training labels blanked per head, in [0, 1).
        random_backbone: :class:`~dinov2_heads.backbone.BackboneConfig` overrides for the random
            backbone; default :data:`RANDOM_BACKBONE`.
        num_samples: Held-out images written to ``samples/`` as PNG files, to try ``predict``
            on; the PCA picture shows the first four (at most).
        progress: Show progress bars for the extraction and the training.
        echo: Called with one line of text per step (the command line prints them); ``None``
            logs them at INFO level instead.

    Returns:
        The results, also written to ``results.json``.

    Raises:
        ValueError: A setting is out of range, or ``out`` holds other files.
        PermissionError: ``out`` cannot be written to.
    """
    say: Echo = echo if echo is not None else logger.info
    _check_settings(num_train, num_heldout, epochs, batch_size, missing, num_samples)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, random_weights = _backbone(checkpoint, variant, random_backbone)
        folder = _prepare_out(out)
        frozen = FrozenBackbone(backbone)
        description = _describe_backbone(backbone, checkpoint, variant)
        say(f"backbone: {description}")
        if random_weights:
            say(
                "  RANDOM weights: no --checkpoint was given, so the accuracies below show that "
                "the pipeline works, not what DINOv2 features can do; for real use pass "
                "--checkpoint dinov2_vits14_pretrain.pth (or any DINOv2 checkpoint)"
            )

        tick = time.perf_counter()
        # The checkpoint the stores record: the random weights are saved with the heads.
        source = folder / FILES["backbone"] if random_weights else checkpoint
        assert source is not None
        train_set, heldout_set, train_store, heldout_store = _extract(
            frozen, folder, source, say, seed, num_train, num_heldout, num_brands, missing, progress
        )
        seconds["features"] = time.perf_counter() - tick

        vocabularies = train_set.vocabularies
        heads = _build_heads(frozen.embed_dim, train_store.grid, vocabularies)
        kinds = ", ".join(
            f"{name}: {type(head).__name__}({head.num_classes})" for name, head in heads.items()
        )
        passes = f"{epochs} epoch" if epochs == 1 else f"{epochs} epochs"
        say(f"training a MultiHead ({kinds}) for {passes} on the cached features")
        tick = time.perf_counter()
        _train(heads, train_store, epochs, batch_size, learning_rate, seed, progress)
        seconds["training"] = time.perf_counter() - tick

        tick = time.perf_counter()
        results = _evaluate(heads, train_store, heldout_store)
        seconds["evaluation"] = time.perf_counter() - tick

        tick = time.perf_counter()
        files = _write_files(
            folder,
            heads=heads,
            frozen=frozen,
            random_weights=random_weights,
            checkpoint=checkpoint,
            heldout_set=heldout_set,
            heldout_store=heldout_store,
            first=num_train,
            num_samples=num_samples,
            results=results,
        )
        seconds["files"] = time.perf_counter() - tick

    seconds["total"] = time.perf_counter() - started
    outcome = DemoResults(
        heads=results,
        out=folder,
        files=files,
        backbone=description,
        random_weights=random_weights,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        variant=backbone.variant,
        backbone_config=backbone.config.to_dict(),
        image_size=IMAGE_SIZE,
        num_train=num_train,
        num_heldout=num_heldout,
        epochs=epochs,
        seed=seed,
        missing=missing,
        seconds={name: round(value, 3) for name, value in seconds.items()},
    )
    text = json.dumps(outcome.to_dict(), indent=2) + "\n"
    atomic_write_bytes(files["results"], text.encode("utf-8"))
    return outcome


# ---------------------------------------------------------------------- steps


def _extract(
    frozen: FrozenBackbone,
    folder: Path,
    checkpoint: str | os.PathLike[str],
    say: Echo,
    seed: int,
    num_train: int,
    num_heldout: int,
    num_brands: int,
    missing: float,
    progress: bool,
) -> tuple[SyntheticVehicles, SyntheticVehicles, FeatureStore, FeatureStore]:
    """Draw the training and held-out vehicles, write them as images with a manifest per
    set, and extract their features once, on disk, beside a ``dataset.json`` that records
    the images and ``checkpoint``."""
    train_set = SyntheticVehicles(
        num_train + num_heldout,
        seed=seed,
        size=IMAGE_SIZE,
        num_brands=num_brands,
        missing=missing,
    )
    heldout_set = SyntheticVehicles(
        num_train + num_heldout, seed=seed, size=IMAGE_SIZE, num_brands=num_brands
    )
    say(
        f"data: {num_train} synthetic vehicles to train on ({100 * missing:.0f}% of each "
        f"label blanked), {num_heldout} held out, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} pixels"
    )
    say("extracting features once into the feature cache (patch tokens kept for the neck)")
    # On disk, so that `dinov2-heads train` can train more heads from them afterwards, and
    # beside the image files and manifests they hold the features of, so that `dinov2-heads
    # search` shows the images: what `dinov2-heads extract` of those manifests would write.
    stores = []
    for name, data, rows in (
        ("train", train_set, range(num_train)),
        ("heldout", heldout_set, range(num_train, num_train + num_heldout)),
    ):
        path = folder / FILES["features"] / name
        remove_store(path, companions=(DATASET_FILE,))
        manifest = _write_images(data, folder / FILES["data"] / name, rows)
        stores.append(
            extract_features(
                frozen,
                Subset(data, rows),
                path=path,
                keep="patch_tokens",
                batch_size=32,
                preprocessing="vehicle_crop",
                progress=progress,
            )
        )
        description = {
            "source": [str(manifest)],
            "kind": "manifest",
            "class_names": {label: list(names) for label, names in data.vocabularies.items()},
            "paths": [str(manifest.parent / "images" / f"{index:06d}.png") for index in rows],
            "skipped": [],
            CHECKPOINT_KEY: checkpoint_record(checkpoint),
        }
        text = json.dumps(description, indent=1, ensure_ascii=False) + "\n"
        atomic_write_bytes(path / DATASET_FILE, text.encode("utf-8"))
    return train_set, heldout_set, stores[0], stores[1]


def _write_images(data: SyntheticVehicles, root: Path, rows: range) -> Path:
    """The images of ``rows`` and their labels' manifest under ``root``, replacing an earlier
    demo's; returns the manifest."""
    if root.is_dir():
        # An earlier demo's images in the demo's own folder (_prepare_out checked it is one).
        shutil.rmtree(root)
    return data.write_manifest(root, indices=rows)


def _check_settings(
    num_train: int,
    num_heldout: int,
    epochs: int,
    batch_size: int,
    missing: float,
    num_samples: int,
) -> None:
    for name, value, least in (
        ("num_train", num_train, 2),
        ("num_heldout", num_heldout, 1),
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 2),
        ("num_samples", num_samples, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing is the share of blanked labels in [0, 1), got {missing}")


def _prepare_out(out: str | os.PathLike[str] | None) -> Path:
    folder = fresh_directory() if out is None else Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; pass a folder for the demo's files")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / FILES["results"]).is_file():
        raise ValueError(
            f"--out {folder} is not empty and holds no earlier demo results; pass a new or "
            "empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        # Found now rather than when the files are written, at the end of the whole run.
        raise PermissionError(
            f"--out {folder} is not writable (read-only folder or file system); pass a folder "
            "you can write to"
        )
    return folder


def _backbone(
    checkpoint: str | os.PathLike[str] | None,
    variant: str | None,
    random_backbone: Mapping[str, Any] | None,
) -> tuple[DinoVisionTransformer, bool]:
    if checkpoint is not None:
        from dinov2_heads.checkpoints import load_backbone

        return load_backbone(checkpoint, variant=variant), False
    name = variant or DEFAULT_VARIANT
    get_config(name)  # an unknown name raises here, listing the valid ones
    overrides = dict(RANDOM_BACKBONE if random_backbone is None else random_backbone)
    return create_backbone(name, **overrides), True


def _describe_backbone(
    backbone: DinoVisionTransformer,
    checkpoint: str | os.PathLike[str] | None,
    variant: str | None,
) -> str:
    config = backbone.config
    shape = (
        f"{_count(config.depth, 'block')} of width {config.embed_dim}, "
        f"{_count(config.num_heads, 'attention head')}"
    )
    if config.num_register_tokens:
        shape += f", {config.num_register_tokens} registers"
    if checkpoint is not None:
        name = backbone.variant or "a custom architecture"
        return f"{name} ({shape}) from {checkpoint}"
    family = variant or DEFAULT_VARIANT
    return f"randomly initialised, {shape} (a shrunk {family} so it runs fast on a CPU)"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _build_heads(
    embed_dim: int, grid: tuple[int, int], vocabularies: Mapping[str, tuple[str, ...]]
) -> MultiHead:
    heads: dict[str, nn.Module] = {
        name: LinearHead(embed_dim, len(vocabularies[name]), class_names=vocabularies[name])
        for name in LINEAR_HEADS
    }
    heads[NECK_HEAD] = Conv1dNeck(
        grid, embed_dim, len(vocabularies[NECK_HEAD]), class_names=vocabularies[NECK_HEAD]
    )
    return MultiHead(heads)


def _train(
    heads: MultiHead,
    store: FeatureStore,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool,
) -> None:
    per_batch = min(batch_size, len(store))
    # Whole batches only: BatchNorm in the neck cannot train on a last batch of one sample.
    loader = FeatureDataset(store).loader(per_batch, shuffle=True, drop_last=True, seed=seed)
    steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = MultiHeadLoss()
    heads.train()
    with Progress(steps * per_batch, "training heads", enabled=progress) as bar:
        for epoch in range(epochs):
            total = 0.0
            for features, labels in loader:
                loss, _ = loss_fn(heads(features), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
                bar.update(features.batch_size)
            logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, total / len(loader))
    heads.eval()


def _evaluate(
    heads: MultiHead, train_store: FeatureStore, heldout_store: FeatureStore
) -> tuple[HeadResult, ...]:
    features = heldout_store.features(slice(None))
    labels = heldout_store.labels(slice(None))
    train_labels = train_store.labels(slice(None))
    assert isinstance(labels, dict)
    assert isinstance(train_labels, dict)
    predictions = predict(heads, features)
    assert isinstance(predictions, dict)
    results = []
    for name, head in heads.items():
        known = labels[name] >= 0
        correct = int((predictions[name].index[known] == labels[name][known]).sum())
        count = int(known.sum())
        num_classes = int(getattr(head, "num_classes"))  # noqa: B009 - a module attribute
        results.append(
            HeadResult(
                name=name,
                kind=type(head).__name__,
                num_classes=num_classes,
                accuracy=correct / count if count else math.nan,
                chance=1.0 / num_classes,
                correct=correct,
                count=count,
                train_labels=int((train_labels[name] >= 0).sum()),
            )
        )
    return tuple(results)


def _write_files(
    folder: Path,
    *,
    heads: MultiHead,
    frozen: FrozenBackbone,
    random_weights: bool,
    checkpoint: str | os.PathLike[str] | None,
    heldout_set: SyntheticVehicles,
    heldout_store: FeatureStore,
    first: int,
    num_samples: int,
    results: tuple[HeadResult, ...],
) -> dict[str, Path]:
    from dinov2_heads.viz import pca_caption, pca_rgb, save_pca_grid

    files = {name: folder / filename for name, filename in FILES.items()}
    save_heads(
        files["heads"],
        heads,
        backbone=frozen,
        input_size=IMAGE_SIZE,
        extra={
            "preprocessing": "vehicle_crop",
            "made_by": "dinov2-heads demo",
            "heldout_accuracy": {result.name: result.accuracy for result in results},
        },
    )
    if random_weights:
        buffer = io.BytesIO()
        torch.save(frozen.backbone.state_dict(), buffer)
        atomic_write_bytes(files["backbone"], buffer.getvalue())
    else:
        stale = files.pop("backbone")
        # An earlier random-weights demo's backbone does not belong with these heads, unless
        # it is the very checkpoint they were trained on.
        if stale.is_file() and not (checkpoint is not None and _same_file(stale, checkpoint)):
            stale.unlink()

    samples = files["samples"]
    samples.mkdir(exist_ok=True)
    for stale in samples.glob("[0-9]*-*.png"):
        # Samples of an earlier demo run in this folder, which the new ones replace.
        stale.unlink()
    for index in range(first, first + min(num_samples, len(heldout_store))):
        vehicle = heldout_set.vehicle(index)
        name = f"{index:06d}-{vehicle.body}-{vehicle.colour}-{vehicle.orientation}-{vehicle.brand}"
        with atomic_path(samples / f"{name}.png") as temporary:
            heldout_set.render(index).save(temporary, format="PNG")

    shown = min(4, len(heldout_store))
    images = torch.stack([heldout_set[index][0] for index in range(first, first + shown)])
    pictures = pca_rgb(heldout_store.features(slice(0, shown)))
    caption = pca_caption(random_weights=random_weights)
    save_pca_grid(files["pca"], images, pictures, columns=2, caption=caption)
    return files


def _same_file(path: Path, other: str | os.PathLike[str]) -> bool:
    try:
        return path.samefile(other)
    except OSError:
        return False
