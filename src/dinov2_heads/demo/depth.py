"""The demo's depth part: a linear depth head on frozen tokens learns metres from street scenes.

:func:`run_depth_demo` draws synthetic vehicles with their depth maps (a ground plane, the
vehicle on it, background walls; the sky has no depth) in fog, extracts the tokens the head
reads once, trains a :class:`~dinov2_heads.heads.LinearDepthHead` on them, and reports the
held-out AbsRel, RMSE and delta < 1.25 next to a constant guess (the training set's median
depth for every pixel), with a colour-mapped picture of one held-out prediction. With a folder
it also saves the head as a heads file (:func:`~dinov2_heads.export.save_heads`; the head keeps
its depth range: what ``dinov2-heads train`` writes for a store of depth maps) and a few
held-out scenes beside it, for ``dinov2-heads depth`` to run on.

The fog (:mod:`dinov2_heads.demo.fog`) dims far things into its colour, so the distance shows
in each patch's colours: a randomly initialised backbone passes colours on, so the head learns
real depth from it; a real checkpoint sees the shapes as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_heads.atomic import atomic_write_bytes
from dinov2_heads.demo.depth_pairs import SyntheticDepthPairs
from dinov2_heads.demo.fog import FOG_DISTANCE
from dinov2_heads.demo.folders import save_demo_head
from dinov2_heads.demo.labelled_features import labelled_features
from dinov2_heads.demo.street_depth import FAR_DEPTH
from dinov2_heads.demo.synthetic import SyntheticVehicles
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearDepthHead
from dinov2_heads.heads.depth_blocks import backbone_depth, depth_head_inputs
from dinov2_heads.progress import Progress
from dinov2_heads.training.depth_metrics import DepthMetrics

logger = logging.getLogger(__name__)

#: The vehicle-crop input size (H, W): a 9x18 patch grid.
IMAGE_SIZE = (126, 252)
#: The file names the depth demo writes.
DEPTH_FILES = {
    "prediction": "depth.png",
    "truth": "depth_truth.png",
    "results": "depth_results.json",
    "heads": "depth_head.pt",
    "samples": "depth_samples",
}
#: The metrics the demo reports, with how they are printed.
REPORTED = (("abs_rel", "AbsRel"), ("rmse", "RMSE (m)"), ("delta1", "delta<1.25"))
#: Depth bins of the head: fewer than the official 256, for a CPU demo in seconds.
N_BINS = 16

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DepthResults:
    """What :func:`run_depth_demo` measured.

    Attributes:
        metrics: Held-out depth metrics of the head (every name of
            :data:`~dinov2_heads.training.DEPTH_METRICS`), averaged over images.
        baseline: The same metrics of the constant guess.
        baseline_depth: The constant guess: the median depth of the training pixels, metres.
        num_train: Training images.
        num_heldout: Held-out images.
        epochs: Passes over the cached features.
        fog: The fog distance the scenes were drawn with, metres.
        files: ``prediction`` and ``truth`` (a held-out image beside its predicted and its
            true depth, with a colour bar in metres), ``results``, ``heads`` (the head as a
            heads file) and ``samples`` (a folder of held-out scenes).
        seconds: Wall-clock time per stage and ``total``.
        head: The trained head, in eval mode.
        image_size: The input size (H, W) the head was trained and evaluated at.
    """

    metrics: dict[str, float]
    baseline: dict[str, float]
    baseline_depth: float
    num_train: int
    num_heldout: int
    epochs: int
    fog: float
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    head: LinearDepthHead | None = field(default=None, repr=False, compare=False)
    image_size: tuple[int, int] = IMAGE_SIZE

    def table(self) -> str:
        """AbsRel, RMSE and delta < 1.25 of the head beside the constant guess, as aligned text."""
        width = max(len(label) for _, label in REPORTED)
        lines = [f"{'metric':<{width}}  {'head':>7}  {'constant':>8}  better"]
        for name, label in REPORTED:
            head, constant = self.metrics[name], self.baseline[name]
            if name.startswith("delta"):
                shown, better = f"{100 * head:>6.1f}%  {100 * constant:>7.1f}%", "higher"
            else:
                shown, better = f"{head:>7.3f}  {constant:>8.3f}", "lower"
            lines.append(f"{label:<{width}}  {shown}  {better}")
        lines.append(
            f"constant: every pixel at the training scenes' median depth, "
            f"{self.baseline_depth:.2f} m"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``depth_results.json`` holds)."""
        return {
            "metrics": dict(self.metrics),
            "baseline": dict(self.baseline),
            "baseline_depth": self.baseline_depth,
            "num_train": self.num_train,
            "num_heldout": self.num_heldout,
            "epochs": self.epochs,
            "fog": self.fog,
            "seconds": dict(self.seconds),
            "files": {name: str(path) for name, path in self.files.items()},
        }


def run_depth_demo(
    frozen: FrozenBackbone | nn.Module,
    out: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    num_train: int = 200,
    num_heldout: int = 40,
    epochs: int = 50,
    batch_size: int = 16,
    learning_rate: float = 0.1,
    fog: float = FOG_DISTANCE,
    num_samples: int = 4,
    progress: bool = True,
    echo: Echo | None = None,
) -> DepthResults:
    """Train a linear depth head on synthetic street scenes and report held-out metrics.

    Args:
        frozen: The backbone (bare or a ``FrozenBackbone``); the head reads its last block
            without the final norm, with the class token, as the official linear depth head.
        out: Folder for ``depth.png``, ``depth_truth.png``, ``depth_results.json``, the head
            (``depth_head.pt``) and held-out scenes (``depth_samples/``); ``None`` writes
            nothing.
        seed: Seed of the images and of the head's training.
        num_train: Training images.
        num_heldout: Held-out images, drawn after the training ones.
        epochs: Passes over the cached training features.
        batch_size: Training batch size.
        learning_rate: AdamW learning rate, annealed to 0 by a cosine schedule.
        fog: Metres over which the scenes' fog dims a colour to 1/e.
        num_samples: Held-out scenes written to ``depth_samples/`` as PNG files (in their fog),
            to try ``dinov2-heads depth`` on (at most ``num_heldout``).
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
        head = LinearDepthHead(embed_dim, layers=1, n_bins=N_BINS, max_depth=FAR_DEPTH)
        if not isinstance(frozen, FrozenBackbone):
            frozen = FrozenBackbone.for_heads(frozen, head)
        pairs = SyntheticDepthPairs(
            SyntheticVehicles(num_train + num_heldout, seed=seed, size=IMAGE_SIZE), fog=fog
        )
        say(
            f"depth: {num_train} synthetic street scenes in fog with depth maps in metres to "
            f"train a LinearDepthHead on the frozen tokens, {num_heldout} held out"
        )
        tick = time.perf_counter()
        train_features, train_depths = labelled_features(frozen, pairs, range(num_train), progress)
        held = range(num_train, num_train + num_heldout)
        held_features, held_depths = labelled_features(frozen, pairs, held, progress)
        seconds["features"] = time.perf_counter() - tick

        tick = time.perf_counter()
        _train(head, train_features, train_depths, epochs, batch_size, learning_rate, progress)
        seconds["training"] = time.perf_counter() - tick

        with torch.no_grad():
            predictions = _predict(head.eval(), held_features, held_depths.shape[-2:])
        metrics = _metrics(predictions, held_depths)
        median = float(train_depths[train_depths > 0].median())
        baseline = _metrics(torch.full_like(held_depths, median), held_depths)
        files: dict[str, Path] = {}
        if out is not None:
            tick = time.perf_counter()
            files = _write(Path(out), pairs, num_train, predictions, held_depths)
            held = range(num_train, num_train + min(num_samples, num_heldout))
            files.update(_save(Path(out), head, frozen, metrics, pairs, held))
            seconds["files"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    results = DepthResults(
        metrics=metrics,
        baseline=baseline,
        baseline_depth=median,
        num_train=num_train,
        num_heldout=num_heldout,
        epochs=epochs,
        fog=fog,
        files=files,
        seconds={name: round(value, 3) for name, value in seconds.items()},
        head=head,
    )
    if "results" in files:
        text = json.dumps(results.to_dict(), indent=2) + "\n"
        atomic_write_bytes(files["results"], text.encode("utf-8"))
    return results


def head_inputs(head: LinearDepthHead, features: Features) -> Tensor:
    """(B, 2D, h, w): the block's patch map with its class token broadcast, on the patch grid.

    What :meth:`LinearDepthHead.decode` concatenates before resizing it to 4x the grid.
    """
    blocks = head.required_blocks(backbone_depth(features, "LinearDepthHead"))
    ((patch_map, class_token),) = depth_head_inputs(
        features, blocks, head.embed_dim, "LinearDepthHead"
    )
    return torch.cat([patch_map, class_token[:, :, None, None].expand_as(patch_map)], dim=1)


def patch_depths(depths: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, 1, h, w): the geometric mean of each patch's valid depths; 0 where it has none."""
    valid = (depths > 0).float()
    logs = torch.where(depths > 0, depths.clamp(min=1e-6).log(), torch.zeros(()))
    share = F.adaptive_avg_pool2d(valid, grid)
    mean_log = F.adaptive_avg_pool2d(logs, grid) / share.clamp(min=1e-12)
    return torch.where(share > 0, mean_log.exp(), torch.zeros(()))


def _train(
    head: LinearDepthHead,
    features: Features,
    depths: Tensor,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    progress: bool,
) -> None:
    """Fit the head's weights on the patch grid, against each patch's depth.

    The head resizes its inputs to 4x the grid before its 1x1 convolution and bin weighting;
    trained on the grid itself, against the geometric mean of each patch's valid depths with
    an L1 loss on log depth, the same weights learn in a fraction of the time. The evaluation
    runs the head as it is.
    """
    inputs = head_inputs(head, features)
    targets = patch_depths(depths, (inputs.shape[-2], inputs.shape[-1]))
    count = inputs.shape[0]
    per_batch = max(1, min(batch_size, count))
    steps = epochs * max(1, count // per_batch)
    bias = head.conv_depth.bias
    assert bias is not None  # the official head's convolution has a bias
    with torch.no_grad():
        # Every bin starts above the ReLU's corner, so no pixel starts without a gradient.
        bias.fill_(1.0)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    head.train()
    with (
        _one_thread(),
        Progress(steps * per_batch, "training the depth head", enabled=progress) as bar,
    ):
        for _ in range(epochs):
            order = torch.randperm(count)
            for start in range(0, count - per_batch + 1, per_batch):
                chosen = order[start : start + per_batch]
                predicted = head.depth_from_logits(head.conv_depth(inputs[chosen]))
                loss = _log_l1(predicted, targets[chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()
                bar.update(per_batch)
    head.eval()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread inside, then restore the thread count.

    The training steps are tiny (a 1x1 convolution over a few patch grids): a second thread
    saves nothing, and on a busy machine every step would wait for it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _log_l1(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean |log predicted - log target| over the pixels with a target depth (> 0)."""
    valid = (target > 0).float()
    error = (predicted.log() - target.clamp(min=1e-6).log()).abs()
    return (error * valid).sum() / valid.sum().clamp(min=1.0)


def _predict(
    head: LinearDepthHead, features: Features, size: torch.Size | tuple[int, ...]
) -> Tensor:
    """Depth (B, 1, H, W) as a ``Depther`` gives it: clamped to the head's range, resized."""
    depth = head(features).clamp(min=head.min_depth, max=head.max_depth)
    return F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=False)


def _metrics(predictions: Tensor, depths: Tensor) -> dict[str, float]:
    metrics = DepthMetrics(max_depth=FAR_DEPTH)
    metrics.update(predictions, depths)
    return metrics.compute(reduce=False)


def _write(
    folder: Path,
    pairs: SyntheticDepthPairs,
    first: int,
    predictions: Tensor,
    depths: Tensor,
) -> dict[str, Path]:
    from dinov2_heads.viz.depth import depth_range, save_depth_picture

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / filename for name, filename in DEPTH_FILES.items()}
    image, _ = pairs.raw(first)
    # One colour scale for both pictures: the true depth's range.
    low, high = depth_range(depths[0])
    for name, depth in (("prediction", predictions[0]), ("truth", depths[0])):
        save_depth_picture(files[name], depth, image, vmin=low, vmax=high)
    return files


def _save(
    folder: Path,
    head: LinearDepthHead,
    frozen: FrozenBackbone,
    metrics: dict[str, float],
    pairs: SyntheticDepthPairs,
    held: range,
) -> dict[str, Path]:
    """The head as a heads file, as ``dinov2-heads train`` saves one dense head (alone, with its
    depth range, the backbone and the input size), and the scenes ``held`` beside it."""
    from dinov2_heads.data.functional import tensor_to_pil

    files = {name: folder / DEPTH_FILES[name] for name in ("heads", "samples")}
    metrics_json = {name: None if math.isnan(value) else value for name, value in metrics.items()}
    pictures = ((index, tensor_to_pil(pairs.raw(index)[0])) for index in held)
    save_demo_head(files, head, frozen, IMAGE_SIZE, metrics_json, pictures)
    return files
