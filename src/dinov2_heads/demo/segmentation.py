"""The demo's segmentation part: a linear head on frozen patch tokens learns vehicle parts.

:func:`run_parts_demo` draws synthetic vehicles with their part masks (background, body,
windows, wheels, emblem), extracts the patch tokens once, trains a
:class:`~dinov2_heads.heads.LinearSegmentationHead` on them, and reports the held-out mIoU
next to chance, with a picture of a few held-out predictions. With a folder it also saves the
head as a heads file (:func:`~dinov2_heads.export.save_heads`, with its class names: what
``dinov2-heads train`` writes for a store of masks) and a few held-out images beside it, for
``dinov2-heads segment`` to run on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.demo.drawing import PART_PALETTE, PARTS
from dinov2_heads.demo.folders import save_demo_head
from dinov2_heads.demo.labelled_features import labelled_features
from dinov2_heads.demo.synthetic import SyntheticVehicles
from dinov2_heads.dense.segmentation_loss import segmentation_loss
from dinov2_heads.dense.segmentation_metrics import SegmentationMetrics, SegmentationScores
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead
from dinov2_heads.progress import Progress

logger = logging.getLogger(__name__)

#: The vehicle-crop input size (H, W): a 9x18 patch grid.
IMAGE_SIZE = (126, 252)
#: The file names the parts demo writes.
PARTS_FILES = {
    "overlay": "parts_overlay.png",
    "results": "parts_results.json",
    "heads": "parts_head.pt",
    "samples": "parts_samples",
}

Echo = Callable[[str], None]


@dataclass(frozen=True)
class PartsResults:
    """What :func:`run_parts_demo` measured.

    Attributes:
        scores: Held-out mIoU, per-part IoU and pixel accuracy.
        chance_miou: The expected mIoU of guessing every pixel's part uniformly at random.
        majority_miou: The mIoU of calling every pixel background.
        num_train: Training images.
        num_heldout: Held-out images.
        epochs: Passes over the cached features.
        files: ``overlay`` (held-out images: picture, prediction, truth), ``results``,
            ``heads`` (the head as a heads file) and ``samples`` (a folder of held-out images).
        seconds: Wall-clock time per stage and ``total``.
        head: The trained head, in eval mode.
        image_size: The input size (H, W) the head was trained and evaluated at.
    """

    scores: SegmentationScores
    chance_miou: float
    majority_miou: float
    num_train: int
    num_heldout: int
    epochs: int
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    head: LinearSegmentationHead | None = field(default=None, repr=False, compare=False)
    image_size: tuple[int, int] = IMAGE_SIZE

    def table(self) -> str:
        """Held-out IoU per part, then mIoU beside chance, as aligned text."""
        lines = [str(self.scores)]
        lines.append(
            f"chance (uniform guess) mIoU {100 * self.chance_miou:.2f}, all-background mIoU "
            f"{100 * self.majority_miou:.2f}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``parts_results.json`` holds)."""
        return {
            "miou": self.scores.miou,
            "iou": dict(zip(PARTS, self.scores.iou, strict=True)),
            "pixel_accuracy": self.scores.pixel_accuracy,
            "chance_miou": self.chance_miou,
            "majority_miou": self.majority_miou,
            "num_train": self.num_train,
            "num_heldout": self.num_heldout,
            "epochs": self.epochs,
            "seconds": dict(self.seconds),
            "files": {name: str(path) for name, path in self.files.items()},
        }


def run_parts_demo(
    frozen: FrozenBackbone | nn.Module,
    out: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    num_train: int = 200,
    num_heldout: int = 40,
    epochs: int = 20,
    batch_size: int = 16,
    learning_rate: float = 1e-2,
    num_pictures: int = 4,
    num_samples: int = 4,
    progress: bool = True,
    echo: Echo | None = None,
) -> PartsResults:
    """Train a linear segmentation head on vehicle parts and report the held-out mIoU.

    Args:
        frozen: The backbone (bare or a ``FrozenBackbone``); its last block's normed patch
            tokens are read.
        out: Folder for ``parts_overlay.png``, ``parts_results.json``, the head
            (``parts_head.pt``) and held-out images (``parts_samples/``); ``None`` writes
            nothing.
        seed: Seed of the images and of the head's training.
        num_train: Training images.
        num_heldout: Held-out images, drawn after the training ones.
        epochs: Passes over the cached training features.
        batch_size: Training batch size.
        learning_rate: AdamW learning rate.
        num_pictures: Held-out images shown in the overlay picture.
        num_samples: Held-out images written to ``parts_samples/`` as PNG files, to try
            ``dinov2-heads segment`` on (at most ``num_heldout``).
        progress: Show progress bars.
        echo: Called with one line per step; ``None`` logs them.
    """
    say: Echo = echo if echo is not None else logger.info
    for name, value in (("num_train", num_train), ("num_heldout", num_heldout), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embed_dim = int(getattr(frozen, "embed_dim", 0))
        head = LinearSegmentationHead(embed_dim, len(PARTS), class_names=PARTS)
        if not isinstance(frozen, FrozenBackbone):
            frozen = FrozenBackbone.for_heads(frozen, head)
        vehicles = SyntheticVehicles(num_train + num_heldout, seed=seed, size=IMAGE_SIZE)
        say(
            f"parts: {num_train} synthetic vehicles with part masks ({', '.join(PARTS)}) to "
            f"train a LinearSegmentationHead on the frozen patch tokens, {num_heldout} held out"
        )
        tick = time.perf_counter()
        parts = vehicles.parts()
        train_features, train_masks = labelled_features(frozen, parts, range(num_train), progress)
        held_features, held_masks = labelled_features(
            frozen, parts, range(num_train, num_train + num_heldout), progress
        )
        seconds["features"] = time.perf_counter() - tick

        tick = time.perf_counter()
        # Trained against masks at 4x the patch grid: a CPU demo in seconds, not minutes.
        grid = train_features.grid
        coarse = nn.functional.interpolate(
            train_masks[:, None].float(), size=(4 * grid[0], 4 * grid[1]), mode="nearest-exact"
        )[:, 0].long()
        _train(head, train_features, coarse, epochs, batch_size, learning_rate, progress)
        seconds["training"] = time.perf_counter() - tick

        metrics = SegmentationMetrics(len(PARTS), class_names=PARTS)
        with torch.no_grad():
            logits = head.eval()(held_features)
            predictions = _upsample(logits, held_masks.shape[-2:]).argmax(dim=1)
        metrics.update(predictions, held_masks)
        scores = metrics.compute(reduce=False)
        chance, majority = _baselines(train_masks, held_masks)
        files: dict[str, Path] = {}
        if out is not None:
            tick = time.perf_counter()
            files = _write(Path(out), vehicles, num_train, predictions, num_pictures)
            held = range(num_train, num_train + min(num_samples, num_heldout))
            files.update(_save(Path(out), head, frozen, scores, vehicles, held))
            seconds["files"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    results = PartsResults(
        scores=scores,
        chance_miou=chance,
        majority_miou=majority,
        num_train=num_train,
        num_heldout=num_heldout,
        epochs=epochs,
        files=files,
        seconds={name: round(value, 3) for name, value in seconds.items()},
        head=head,
    )
    if "results" in files:
        text = json.dumps(results.to_dict(), indent=2) + "\n"
        atomic_write_bytes(files["results"], text.encode("utf-8"))
    return results


def _upsample(logits: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    return nn.functional.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _train(
    head: LinearSegmentationHead,
    features: Features,
    masks: Tensor,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    progress: bool,
) -> None:
    count = features.batch_size
    per_batch = max(2, min(batch_size, count))
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * max(1, count // per_batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    head.train()
    with Progress(steps * per_batch, "training the parts head", enabled=progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(count)
            for start in range(0, count - per_batch + 1, per_batch):
                chosen = order[start : start + per_batch]
                loss = segmentation_loss(head(features[chosen]), masks[chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()
                bar.update(per_batch)
    head.eval()


def _baselines(train_masks: Tensor, held_masks: Tensor) -> tuple[float, float]:
    """Expected mIoU of a uniform random guess, and the mIoU of "all background"."""
    k = len(PARTS)
    counts = torch.bincount(held_masks.flatten(), minlength=k).double()
    total = counts.sum()
    # A uniform guess puts n_i / K of class i's pixels in each column: IoU_j is
    # (n_j / K) / (n_j + N / K - n_j / K) in expectation.
    expected = (counts / k) / (counts + total / k - counts / k)
    present = counts > 0
    chance = float(expected[present].mean())
    majority = int(torch.bincount(train_masks.flatten(), minlength=k).argmax())
    metrics = SegmentationMetrics(k)
    metrics.update(torch.full_like(held_masks, majority), held_masks)
    return chance, metrics.compute(reduce=False).miou


def _write(
    folder: Path,
    vehicles: SyntheticVehicles,
    first: int,
    predictions: Tensor,
    num_pictures: int,
) -> dict[str, Path]:
    from dinov2_heads.data.loading import require_pillow
    from dinov2_heads.viz.segmentation import overlay_labels, save_image

    pil = require_pillow()
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / filename for name, filename in PARTS_FILES.items()}
    shown = min(num_pictures, predictions.shape[0])
    height, width = IMAGE_SIZE
    sheet = pil.Image.new("RGB", (3 * width, max(shown, 1) * height), (255, 255, 255))
    for row in range(shown):
        index = first + row
        picture = vehicles.render(index)
        predicted = overlay_labels(picture, predictions[row], PART_PALETTE, alpha=0.6)
        truth = overlay_labels(picture, vehicles.part_mask(index), PART_PALETTE, alpha=0.6)
        for column, tile in enumerate((picture, predicted, truth)):
            sheet.paste(tile, (column * width, row * height))
    save_image(sheet, files["overlay"])
    return files


def _save(
    folder: Path,
    head: LinearSegmentationHead,
    frozen: FrozenBackbone,
    scores: SegmentationScores,
    vehicles: SyntheticVehicles,
    held: range,
) -> dict[str, Path]:
    """The head as a heads file, as ``dinov2-heads train`` saves one dense head (alone, with its
    class names, the backbone and the input size), and the images ``held`` beside it."""
    files = {name: folder / PARTS_FILES[name] for name in ("heads", "samples")}
    metrics = {
        "miou": _number(scores.miou),
        "pixel_accuracy": _number(scores.pixel_accuracy),
        "iou": {name: _number(v) for name, v in zip(PARTS, scores.iou, strict=True)},
    }
    pictures = ((index, vehicles.render(index)) for index in held)
    save_demo_head(files, head, frozen, IMAGE_SIZE, metrics, pictures)
    return files


def _number(value: float) -> float | None:
    """``value`` for JSON: ``None`` for NaN (a part that never occurs)."""
    return None if math.isnan(value) else float(value)
