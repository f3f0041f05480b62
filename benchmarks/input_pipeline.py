"""Input pipeline: JPEG decoding with and without draft mode, and extraction from files against
the backbone alone.

Writes synthetic JPEG photos (gradients, soft shapes and sensor noise, so the files have
realistic sizes) of each ``--sizes`` entry, then measures:

1. Decoding: ``load_image`` and ``load_image`` + the preset's preprocessing, one image at a
   time in this process on one thread (as each ``DataLoader`` worker runs), with full
   decoding and with JPEG draft decoding
   (``Preprocess(..., draft=True)``): images/s (median of ``--runs``), and how far the drafted
   pixels and features land from the fully decoded ones.
2. Extraction: ``extract_features`` over ``--images`` samples from an ``ImageFolderDataset``
   of ``--photos`` files (repeated as often as needed; the files stay in the page cache, as
   the photos of a real data set do after the first pass), draft on, ``--workers`` DataLoader
   workers, against the same ``FrozenBackbone`` on random images already on the device
   ("backbone only"): images/s of both, their ratio, and the share of the time the extraction
   waited for data. "steady" leaves out the first batch (worker start-up, first call). The
   DataLoader hands each batch to one worker, so a run needs many batches per worker to
   reach its steady pace: hence the large default ``--images`` on CUDA.
3. Hand-off (``--handoff both``, the default): each extraction run above is made twice in a
   row, once with the workers handing normalised float32 images to the main process (the
   ``Preprocess`` default) and once with ``uint8`` pixels (``Preprocess(normalize=False)``,
   normalised by the ``FrozenBackbone`` on its device), alternating which goes first: bytes
   per batch handed over, images/s of each (medians) and their ratio (the median of the
   per-run ratios). Then, without the backbone, the loader alone (the same DataLoader
   settings: the workers' decoding, preprocessing and hand-off, and each batch's copy to the
   device) for each hand-off, ``--extraction-runs`` times alternating: images/s and their
   ratio. Also, on one thread, the preprocessing of a decoded photo in a worker with and
   without the normalisation, and on CUDA only, the copy of one pinned batch of each dtype to
   the GPU (milliseconds and GB/s).

CPU (decoding, and a small ViT-S/14 extraction)::

    python benchmarks/input_pipeline.py --device cpu --arch dinov2_vits14 --images 32

GPU (ViT-S/14 and ViT-L/14, bf16 weights; the target is extraction >= 0.9 x backbone only)::

    python benchmarks/input_pipeline.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import PIL
import torch
from PIL import Image, ImageChops
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from dinov2_heads import create_backbone
from dinov2_heads.backbone import list_variants
from dinov2_heads.cache import extract_features
from dinov2_heads.cache.loader_settings import LoaderSettings, available_cpus, loader_settings
from dinov2_heads.data import ImageFolderDataset, Preprocess, get_preset, list_presets, load_image
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.progress import BOUND_SHARE, TimeSplit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# ---------------------------------------------------------------------------- photos


def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A picture that a JPEG encoder treats like a photo: large soft shapes, finer detail,
    lighting from the top, and per-pixel noise of a few grey levels (so the file is about as
    large as a camera's: about 40 KB at 500x375, a few MB at 4000x3000)."""
    generator = torch.Generator().manual_seed(seed)

    def rgb(pixels: torch.Tensor) -> Image.Image:
        height_, width_ = int(pixels.shape[0]), int(pixels.shape[1])
        return Image.frombytes("RGB", (width_, height_), pixels.contiguous().numpy().tobytes())

    def field_of(step: int) -> Image.Image:
        shape = (height // step + 2, width // step + 2, 3)
        coarse = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        return rgb(coarse).resize((width, height), Image.Resampling.BICUBIC)

    longer = max(width, height)
    scene = Image.blend(field_of(max(longer // 6, 1)), field_of(max(longer // 100, 1)), 0.3)
    light = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    dark = Image.new("RGB", (width, height), (20, 25, 35))
    lit = Image.composite(scene, dark, ImageChops.invert(light))
    # Noise of +-10 levels from a 256x256 tile: per-pixel detail everywhere, cheaply.
    tile = rgb(torch.randint(0, 21, (256, 256, 3), generator=generator, dtype=torch.uint8))
    noise = Image.new("RGB", (width, height))
    for top in range(0, height, 256):
        for left in range(0, width, 256):
            noise.paste(tile, (left, top))
    return ImageChops.add(lit, noise, offset=-10)


def write_photos(
    folder: Path, size: tuple[int, int], count: int, distinct: int, quality: int = 90
) -> list[Path]:
    """``count`` JPEG files of ``size`` (width, height) in ``folder/photos/``: ``distinct``
    different pictures, the rest byte copies of them (each decodes in full all the same)."""
    target = folder / "photos"
    target.mkdir(parents=True, exist_ok=True)
    sources: list[bytes] = []
    paths = []
    for index in range(count):
        path = target / f"{index:06d}.jpg"
        if index < distinct:
            synthetic_photo(size[0], size[1], seed=index).save(path, quality=quality)
            sources.append(path.read_bytes())
        else:
            path.write_bytes(sources[index % len(sources)])
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- decoding


@dataclass
class DecodeRow:
    """One size and decoding mode (one line of the decoding table)."""

    size: str
    draft: bool
    photos: int
    file_kb: float
    decoded: str = ""
    decode_ms: float = float("nan")
    decode_images_per_s: float = float("nan")
    images_per_s: float = float("nan")
    speedup: float = float("nan")
    max_levels: float = float("nan")
    mean_levels: float = float("nan")
    feature_rel_diff: float = float("nan")
    decode_rates: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


def images_per_second(work: Callable[[], int], min_seconds: float) -> float:
    """Repeat ``work`` (which returns how many images it handled) for at least ``min_seconds``."""
    images = 0
    start = time.perf_counter()
    while True:
        images += work()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed


def measure_decoding(
    paths: Sequence[Path],
    size: tuple[int, int],
    preset: Preprocess,
    runs: int,
    features: Callable[[torch.Tensor], torch.Tensor] | None,
    *,
    min_seconds: float = 0.5,
) -> list[DecodeRow]:
    """Full and draft decoding of ``paths``: speed, and pixel and feature differences.

    Each run times both modes one after the other (decoding, then decoding and preprocessing),
    so that a machine that slows down or speeds up during the runs affects both alike.
    """
    label = f"{size[0]}x{size[1]}"
    kilobytes = statistics.mean(path.stat().st_size for path in paths) / 1024
    transforms = [preset.replace(draft=False), preset.replace(draft=True)]
    rows = []
    for transform in transforms:
        row = DecodeRow(label, transform.draft, len(paths), round(kilobytes, 1))
        decoded = load_image(paths[0], draft_for=transform).size
        row.decoded = f"{decoded[0]}x{decoded[1]}"
        rows.append(row)

    def decode(transform: Preprocess) -> int:
        for path in paths:
            load_image(path, draft_for=transform)
        return len(paths)

    def decode_and_prepare(transform: Preprocess) -> int:
        for path in paths:
            transform(load_image(path, draft_for=transform))
        return len(paths)

    for transform in transforms:
        decode_and_prepare(transform)  # warm the file cache and the kernels
    for _ in range(runs):
        for row, transform in zip(rows, transforms, strict=True):
            row.decode_rates.append(images_per_second(partial(decode, transform), min_seconds))
            prepare = partial(decode_and_prepare, transform)
            row.rates.append(images_per_second(prepare, min_seconds))
    for row in rows:
        row.decode_images_per_s = statistics.median(row.decode_rates)
        row.decode_ms = 1e3 / row.decode_images_per_s
        row.images_per_s = statistics.median(row.rates)
    full, drafted = rows
    full.speedup = 1.0
    drafted.speedup = statistics.median(
        mine / theirs for mine, theirs in zip(drafted.rates, full.rates, strict=True)
    )
    prepared = [
        torch.stack([transform(load_image(path, draft_for=transform)) for path in paths])
        for transform in transforms
    ]
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    levels = (prepared[1] - prepared[0]).abs() * std * 255
    drafted.max_levels = float(levels.max())
    drafted.mean_levels = float(levels.mean())
    full.max_levels = full.mean_levels = 0.0
    if features is not None:
        reference, candidate = features(prepared[0]), features(prepared[1])
        drafted.feature_rel_diff = float(
            ((candidate - reference).norm(dim=-1) / reference.norm(dim=-1)).max()
        )
        full.feature_rel_diff = 0.0
    return rows


# ---------------------------------------------------------------------------- extraction


@dataclass
class ExtractRow:
    """One backbone and photo size (one line of the extraction table)."""

    arch: str
    size: str
    draft: bool
    images: int
    batch: int
    workers: int
    dtype: str
    handoff: str = "float32"
    batch_bytes: int = 0
    backbone_images_per_s: float = float("nan")
    extract_images_per_s: float = float("nan")
    ratio: float = float("nan")
    steady_ratio: float = float("nan")
    loader_share: float = float("nan")
    verdict: str = ""
    backbone_rates: list[float] = field(default_factory=list)
    extract_rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    steady_ratios: list[float] = field(default_factory=list)
    loader_shares: list[float] = field(default_factory=list)
    error: str = ""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_only(
    frozen: FrozenBackbone,
    batch: int,
    size: tuple[int, int],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
) -> list[float]:
    """Seconds per call of ``frozen`` on random images already on ``device``."""
    images = torch.randn(batch, 3, *size, device=device)
    for _ in range(warmup):
        frozen(images)
    _synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        frozen(images)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def backbone_images_per_second(
    frozen: FrozenBackbone, batch: int, size: tuple[int, int], device: torch.device, iters: int
) -> float:
    """Images/s of ``frozen`` alone: the median of ``iters`` calls."""
    seconds = backbone_only(frozen, batch, size, device, warmup=0, iters=iters)
    return batch / statistics.median(seconds)


class _Splits(logging.Handler):
    """Keeps the time split of each finished progress bar (the last log line carries it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.splits: list[TimeSplit] = []

    def emit(self, record: logging.LogRecord) -> None:
        split = getattr(record, "time_split", None)
        if isinstance(split, TimeSplit):
            self.splits.append(split)


@contextlib.contextmanager
def _capture_splits() -> Iterator[_Splits]:
    logger = logging.getLogger("dinov2_heads.progress")
    handler = _Splits()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def repeated(dataset: ImageFolderDataset, count: int) -> Dataset[Any]:
    """The first ``count`` samples of ``dataset`` repeated as often as needed."""
    copies = -(-count // len(dataset))
    return Subset(ConcatDataset([dataset] * copies), range(count))


def measure_extraction(
    frozen: FrozenBackbone,
    cases: Sequence[tuple[ExtractRow, Dataset[Any]]],
    *,
    runs: int,
    workers: int | str,
    backbone: Callable[[], float],
) -> None:
    """``extract_features`` over each case's dataset ``runs`` times, each run after one
    backbone-only measurement (``backbone()`` gives images/s) that every case of the run is
    compared with, so each ratio compares neighbours in time. The cases take turns going
    first, so that a machine speeding up or slowing down favours none of them."""
    for run in range(runs):
        rate = backbone()
        shift = run % len(cases)
        for row, dataset in [*cases[shift:], *cases[:shift]]:
            row.backbone_rates.append(rate)
            _extract_once(frozen, dataset, row, workers)
    for row, _ in cases:
        _summarise(row)


def _extract_once(
    frozen: FrozenBackbone, dataset: Dataset[Any], row: ExtractRow, workers: int | str
) -> None:
    count = len(dataset)  # type: ignore[arg-type]
    with _capture_splits() as captured:
        start = time.perf_counter()
        extract_features(
            frozen,
            dataset,
            batch_size=row.batch,
            num_workers=workers,  # type: ignore[arg-type]
            dtype=torch.float16,
        )
        row.extract_rates.append(count / (time.perf_counter() - start))
    row.ratios.append(row.extract_rates[-1] / row.backbone_rates[-1])
    split = captured.splits[-1] if captured.splits else None
    if split is not None and split.items and split.waiting + split.working > 0:
        # After the first batch (worker start-up, first call): the loop's steady pace.
        row.steady_ratios.append(
            split.items * row.batch / (split.waiting + split.working) / row.backbone_rates[-1]
        )
        row.loader_shares.append(split.waiting_share or 0.0)


def _summarise(row: ExtractRow) -> None:
    row.backbone_images_per_s = statistics.median(row.backbone_rates)
    row.extract_images_per_s = statistics.median(row.extract_rates)
    row.ratio = statistics.median(row.ratios)
    if row.steady_ratios:
        row.steady_ratio = statistics.median(row.steady_ratios)
        row.loader_share = statistics.median(row.loader_shares)
        row.verdict = "loader-bound" if row.loader_share > BOUND_SHARE else "backbone-bound"


# ---------------------------------------------------------------------------- hand-off

#: What the workers hand to the main process: the ``Preprocess`` that makes it.
HANDOFFS = {"float32": True, "uint8": False}  # name -> Preprocess(normalize=...)


@dataclass
class HandoffRow:
    """float32 against uint8 hand-off for one backbone, photo size and decoding mode."""

    arch: str
    size: str
    draft: bool
    images: int
    batch: int
    workers: int
    float32_batch_bytes: int
    uint8_batch_bytes: int
    float32_images_per_s: float = float("nan")
    uint8_images_per_s: float = float("nan")
    speedup: float = float("nan")
    speedups: list[float] = field(default_factory=list)
    float32_loader_images_per_s: float = float("nan")
    uint8_loader_images_per_s: float = float("nan")
    loader_speedup: float = float("nan")
    float32_loader_rates: list[float] = field(default_factory=list)
    uint8_loader_rates: list[float] = field(default_factory=list)
    float32_prepare_ms: float = float("nan")
    uint8_prepare_ms: float = float("nan")
    float32_copy_ms: float = float("nan")
    uint8_copy_ms: float = float("nan")
    float32_copy_gb_per_s: float = float("nan")
    uint8_copy_gb_per_s: float = float("nan")


def batch_bytes(batch: int, size: tuple[int, int], handoff: str) -> int:
    """Bytes of one batch (B, 3, H, W) of ``handoff`` images."""
    element = torch.empty((), dtype=getattr(torch, handoff)).element_size()
    return batch * 3 * size[0] * size[1] * element


def compare_handoffs(rows: Sequence[ExtractRow]) -> list[HandoffRow]:
    """One :class:`HandoffRow` per pair of float32 and uint8 rows measured together."""
    pairs: dict[tuple[str, str, bool], dict[str, ExtractRow]] = {}
    for row in rows:
        pairs.setdefault((row.arch, row.size, row.draft), {})[row.handoff] = row
    compared = []
    for (arch, size, draft), pair in pairs.items():
        if set(pair) != set(HANDOFFS) or any(row.error for row in pair.values()):
            continue
        floats, pixels = pair["float32"], pair["uint8"]
        speedups = [
            mine / theirs
            for mine, theirs in zip(pixels.extract_rates, floats.extract_rates, strict=True)
        ]
        compared.append(
            HandoffRow(
                arch,
                size,
                draft,
                floats.images,
                floats.batch,
                floats.workers,
                floats.batch_bytes,
                pixels.batch_bytes,
                floats.extract_images_per_s,
                pixels.extract_images_per_s,
                statistics.median(speedups),
                speedups,
            )
        )
    return compared


def loader_only(
    dataset: Dataset[Any], batch: int, settings: LoaderSettings, device: torch.device
) -> float:
    """Images/s of reading ``dataset`` as the extraction does, without the backbone: the
    DataLoader's workers, then each batch's copy to ``device`` (from pinned memory on CUDA)."""
    loader = DataLoader(dataset, batch_size=batch, **settings.arguments())
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += int(images.to(device, non_blocking=True).shape[0])
    _synchronize(device)
    return count / (time.perf_counter() - start)


def measure_loaders(
    row: HandoffRow,
    datasets: dict[str, tuple[Dataset[Any], LoaderSettings]],
    device: torch.device,
    runs: int,
) -> None:
    """:func:`loader_only` for each hand-off ``runs`` times, taking turns to go first."""
    names = list(HANDOFFS)
    ratios = []
    for run in range(runs):
        for name in names[run % 2 :] + names[: run % 2]:
            dataset, settings = datasets[name]
            rates = getattr(row, f"{name}_loader_rates")
            rates.append(loader_only(dataset, row.batch, settings, device))
        ratios.append(row.uint8_loader_rates[-1] / row.float32_loader_rates[-1])
    row.float32_loader_images_per_s = statistics.median(row.float32_loader_rates)
    row.uint8_loader_images_per_s = statistics.median(row.uint8_loader_rates)
    row.loader_speedup = statistics.median(ratios)


def prepare_ms(
    paths: Sequence[Path], preset: Preprocess, runs: int, min_seconds: float
) -> dict[str, float]:
    """Milliseconds per image of each hand-off's preprocessing of decoded photos, one thread
    (as in a worker): the median of ``runs`` runs, both hand-offs in each run."""
    images = [load_image(path, draft_for=preset) for path in paths]
    transforms = {name: preset.replace(normalize=flag) for name, flag in HANDOFFS.items()}

    def prepare(transform: Preprocess) -> int:
        for image in images:
            transform(image)
        return len(images)

    rates: dict[str, list[float]] = {name: [] for name in transforms}
    for _ in range(runs):
        for name, transform in transforms.items():
            rates[name].append(images_per_second(partial(prepare, transform), min_seconds))
    return {name: 1e3 / statistics.median(values) for name, values in rates.items()}


def _one_thread(work: Callable[[], Any]) -> Any:
    """``work()`` with torch on one thread, as in each ``DataLoader`` worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        torch.set_num_threads(threads)


def copy_ms(
    batch: int, size: tuple[int, int], handoff: str, device: torch.device, iters: int
) -> float:
    """CUDA only: the median milliseconds to copy one pinned (B, 3, H, W) batch of
    ``handoff`` images to ``device``, as ``extract_features`` copies each batch."""
    if device.type != "cuda":
        raise ValueError(f"the copy to a GPU is measured on CUDA, not on {device}")
    host = torch.zeros(batch, 3, *size, dtype=getattr(torch, handoff)).pin_memory()
    for _ in range(3):
        host.to(device, non_blocking=True)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        host.to(device, non_blocking=True)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ---------------------------------------------------------------------------- output


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpus_available": available_cpus(),
        "machine": platform.machine(),
        "processor": _processor(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (None if isinstance(value, float) and value != value else value)
        for key, value in item.items()
    }


def format_decode_table(rows: Sequence[DecodeRow]) -> str:
    """Markdown: one line per size and decoding mode."""
    lines = [
        "| photo | KB | draft | decoded at | decode ms | decode images/s "
        "| + preprocess images/s | speed-up | max diff | mean diff | feature diff |",
        "|" + " --- |" * 11,
    ]
    for row in rows:
        feature = (
            "" if row.feature_rel_diff != row.feature_rel_diff else f"{row.feature_rel_diff:.1e}"
        )
        lines.append(
            f"| {row.size} | {row.file_kb:,.0f} | {'on' if row.draft else 'off'} | {row.decoded} "
            f"| {row.decode_ms:.2f} | {row.decode_images_per_s:,.1f} | {row.images_per_s:,.1f} "
            f"| {row.speedup:.2f}x | {row.max_levels:.0f} | {row.mean_levels:.2f} | {feature} |"
        )
    return "\n".join(lines)


def format_extract_table(rows: Sequence[ExtractRow]) -> str:
    """Markdown: one line per backbone, photo size, decoding and hand-off."""
    lines = [
        "| backbone | photo | draft | hand-off | images | batch | workers "
        "| backbone only images/s | extraction images/s | ratio | steady ratio | waiting "
        "| bound |",
        "|" + " --- |" * 13,
    ]
    for row in rows:
        where = (
            f"| {row.arch} ({row.dtype}) | {row.size} | {'on' if row.draft else 'off'} "
            f"| {row.handoff} | {row.images} | {row.batch} | {row.workers} "
        )
        if row.error:
            lines.append(f"{where}| failed: {row.error} |" + " |" * 5)
            continue
        lines.append(
            f"{where}| {row.backbone_images_per_s:,.1f} | {row.extract_images_per_s:,.1f} "
            f"| {row.ratio:.2f} | {row.steady_ratio:.2f} | {row.loader_share:.0%} "
            f"| {row.verdict} |"
        )
    return "\n".join(lines)


def format_handoff_table(rows: Sequence[HandoffRow]) -> str:
    """Markdown: float32 against uint8 hand-off, one line per backbone and photo size."""

    def ms(value: float) -> str:
        return "-" if value != value else f"{value:.3f}"

    def rate(value: float) -> str:
        return "-" if value != value else f"{value:,.1f}"

    lines = [
        "| backbone | photo | draft | workers | batch KB (float32 / uint8) "
        "| float32 extraction images/s | uint8 extraction images/s | uint8 / float32 "
        "| loader only images/s (float32 / uint8) | loader uint8 / float32 "
        "| worker preprocess ms (float32 / uint8) | copy to GPU ms (float32 / uint8) "
        "| copy GB/s (float32 / uint8) |",
        "|" + " --- |" * 13,
    ]
    for row in rows:
        lines.append(
            f"| {row.arch} | {row.size} | {'on' if row.draft else 'off'} | {row.workers} "
            f"| {row.float32_batch_bytes / 1024:,.0f} / {row.uint8_batch_bytes / 1024:,.0f} "
            f"| {rate(row.float32_images_per_s)} | {rate(row.uint8_images_per_s)} "
            f"| {row.speedup:.2f} "
            f"| {rate(row.float32_loader_images_per_s)} / {rate(row.uint8_loader_images_per_s)} "
            f"| {row.loader_speedup:.2f} "
            f"| {ms(row.float32_prepare_ms)} / {ms(row.uint8_prepare_ms)} "
            f"| {ms(row.float32_copy_ms)} / {ms(row.uint8_copy_ms)} "
            f"| {rate(row.float32_copy_gb_per_s)} / {rate(row.uint8_copy_gb_per_s)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


def parse_photo_size(text: str) -> tuple[int, int]:
    """``"4000x3000"`` -> (4000, 3000): width x height, as photos are described."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a photo size WIDTHxHEIGHT such as 4000x3000, got {text!r}"
        )
    return values[0], values[1]


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"--workers must be auto or >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_photo_size,
        default=[(500, 375), (4000, 3000)],
        help="photo sizes, WIDTHxHEIGHT",
    )
    parser.add_argument("--preset", default="official_eval", choices=list_presets())
    parser.add_argument("--distinct", type=int, default=4, help="different photos per size")
    parser.add_argument("--photos", type=int, help="files per size (default 256 on CUDA, 32)")
    parser.add_argument(
        "--images",
        type=int,
        help="samples per extraction, the files repeated (default 8192 on CUDA, --photos)",
    )
    parser.add_argument("--runs", type=int, default=5, help="decoding runs (median)")
    parser.add_argument(
        "--min-seconds", type=float, default=0.5, help="each decoding run lasts at least this"
    )
    parser.add_argument("--extraction-runs", type=int, default=3, help="extraction runs (median)")
    parser.add_argument(
        "--arch",
        nargs="+",
        choices=list_variants(),
        help="backbones (random weights); default ViT-S/14 and ViT-L/14 on CUDA, ViT-S/14",
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="backbone weights: default bf16 on CUDA, fp32"
    )
    parser.add_argument("--batch-size", type=int, help="default 128 on CUDA, 16")
    parser.add_argument("--workers", type=_workers, default="auto", help="auto or a count")
    parser.add_argument(
        "--draft",
        choices=("on", "off", "both"),
        default="on",
        help="decoding in the extraction (both: one row each)",
    )
    parser.add_argument(
        "--handoff",
        choices=("float32", "uint8", "both"),
        default="both",
        help="what the workers hand to the backbone: normalised float32 images, uint8 pixels "
        "normalised on the device, or both in each run (and the comparison table)",
    )
    parser.add_argument("--iters", type=int, default=10, help="timed backbone-only calls")
    parser.add_argument("--depth", type=int, help="build fewer blocks (quick smoke runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-decode", action="store_true", help="only the extraction")
    parser.add_argument("--skip-extraction", action="store_true", help="only the decoding")
    parser.add_argument("--folder", help="write the photos here and keep them (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; returns what ``--json`` prints."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = device.type == "cuda"
    if args.smoke:
        given = list(argv) if argv is not None else sys.argv[1:]
        args.sizes = args.sizes if "--sizes" in given else [(120, 90), (800, 600)]
        args.distinct, args.runs, args.extraction_runs, args.min_seconds = 2, 2, 1, 0.0
        args.photos, args.images, args.batch_size, args.depth, args.iters = 4, 6, 2, 1, 2
        args.arch = args.arch or ["dinov2_vits14"]
    arches = args.arch or (["dinov2_vits14", "dinov2_vitl14"] if on_cuda else ["dinov2_vits14"])
    photos = args.photos or (256 if on_cuda else 32)
    images = args.images or (8192 if on_cuda else photos)
    batch = args.batch_size or (128 if on_cuda else 16)
    dtype_name = args.dtype or ("bf16" if on_cuda else "fp32")
    counts = (args.runs, args.extraction_runs, args.distinct, photos, images, batch, args.iters)
    if min(counts) < 1:
        raise SystemExit(
            "--runs, --extraction-runs, --distinct, --photos, --images, --batch-size and "
            "--iters must be at least 1"
        )
    overrides = {"depth": args.depth} if args.depth else {}
    iters, min_seconds = args.iters, args.min_seconds
    preset = get_preset(args.preset)
    log = _stderr
    root = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="input_pipeline_"))
    decode_rows: list[DecodeRow] = []
    extract_rows: list[ExtractRow] = []
    handoff_rows: list[HandoffRow] = []
    # (photo size, draft) -> {hand-off: (dataset, DataLoader settings)}, for the loader alone.
    readers: dict[tuple[str, bool], dict[str, tuple[Dataset[Any], LoaderSettings]]] = {}
    handoffs = list(HANDOFFS) if args.handoff == "both" else [args.handoff]
    try:
        folders = {}
        for size in args.sizes:
            folder = root / f"{size[0]}x{size[1]}"
            count = max(photos if not args.skip_extraction else 0, args.distinct)
            started = time.perf_counter()
            paths = write_photos(folder, size, count, args.distinct)
            took = time.perf_counter() - started
            log(f"wrote {count} photos of {size[0]}x{size[1]} in {took:.1f} s")
            folders[size] = (folder, paths)
        if not args.skip_decode:
            torch.manual_seed(0)
            probe = create_backbone("dinov2_vits14", **overrides).eval()

            def class_tokens(images: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return probe.forward_features(images)["x_norm_clstoken"]

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # what each DataLoader worker uses
            try:
                for size, (_, paths) in folders.items():
                    log(f"decoding {size[0]}x{size[1]}")
                    distinct = paths[: args.distinct]
                    decode_rows += measure_decoding(
                        distinct, size, preset, args.runs, class_tokens, min_seconds=min_seconds
                    )
            finally:
                torch.set_num_threads(threads)
        if not args.skip_extraction:
            drafts = {"on": [True], "off": [False], "both": [True, False]}[args.draft]
            for arch in arches:
                torch.manual_seed(0)
                backbone = create_backbone(arch, **overrides).to(device)
                frozen = FrozenBackbone(
                    backbone, dtype=DTYPES[dtype_name], mean=preset.mean, std=preset.std
                )
                backbone_rate = partial(
                    backbone_images_per_second, frozen, batch, preset.output_size, device, iters
                )
                backbone_only(frozen, batch, preset.output_size, device, warmup=3, iters=1)

                log(f"{arch} backbone only: {backbone_rate():,.1f} images/s")
                for size, (folder, _) in folders.items():
                    for draft in drafts:
                        cases = []
                        for handoff in handoffs:
                            transform = preset.replace(draft=draft, normalize=HANDOFFS[handoff])
                            dataset = repeated(ImageFolderDataset(folder, transform), images)
                            batches = -(-len(dataset) // batch)
                            settings = loader_settings(
                                args.workers, data="files", batches=batches, device=device
                            )
                            row = ExtractRow(
                                arch,
                                f"{size[0]}x{size[1]}",
                                draft,
                                len(dataset),
                                batch,
                                settings.num_workers,
                                dtype_name,
                                handoff,
                                batch_bytes(batch, preset.output_size, handoff),
                            )
                            cases.append((row, dataset))
                            readers.setdefault((row.size, draft), {})[handoff] = (
                                dataset,
                                settings,
                            )
                        log(
                            f"{arch} extracting {size[0]}x{size[1]} (draft "
                            f"{'on' if draft else 'off'}, {' and '.join(handoffs)} hand-off)"
                        )
                        try:
                            measure_extraction(
                                frozen,
                                cases,
                                runs=args.extraction_runs,
                                workers=args.workers,
                                backbone=backbone_rate,
                            )
                        except Exception as error:  # one failed case still prints the rest
                            for row, _ in cases:
                                row.error = f"{type(error).__name__}: {error}"
                        extract_rows += [row for row, _ in cases]
                del frozen, backbone
                if on_cuda:
                    torch.cuda.empty_cache()
            handoff_rows = compare_handoffs(extract_rows)
            # None of these depends on the backbone: measured once per photo size and decoding.
            loaders: dict[tuple[str, bool], HandoffRow] = {}
            prepared: dict[tuple[str, bool], dict[str, float]] = {}
            copied = {
                handoff: copy_ms(batch, preset.output_size, handoff, device, iters)
                for handoff in HANDOFFS
                if on_cuda and handoff_rows
            }
            for compared in handoff_rows:
                key = (compared.size, compared.draft)
                if key not in loaders:
                    log(f"reading {compared.size} without the backbone, each hand-off")
                    measure_loaders(compared, readers[key], device, args.extraction_runs)
                    loaders[key] = compared
                for name in HANDOFFS:
                    for suffix in ("loader_images_per_s", "loader_rates"):
                        value = getattr(loaders[key], f"{name}_{suffix}")
                        setattr(compared, f"{name}_{suffix}", value)
                compared.loader_speedup = loaders[key].loader_speedup
                if key not in prepared:
                    log(f"preprocessing {compared.size} for each hand-off, one thread")
                    _, paths = next(v for s, v in folders.items() if f"{s[0]}x{s[1]}" == key[0])
                    prepared[key] = _one_thread(
                        partial(
                            prepare_ms,
                            paths[: args.distinct],
                            preset.replace(draft=compared.draft),
                            args.runs,
                            min_seconds,
                        )
                    )
                compared.float32_prepare_ms = prepared[key]["float32"]
                compared.uint8_prepare_ms = prepared[key]["uint8"]
                for handoff, milliseconds in copied.items():
                    nbytes = batch_bytes(batch, preset.output_size, handoff)
                    setattr(compared, f"{handoff}_copy_ms", milliseconds)
                    setattr(compared, f"{handoff}_copy_gb_per_s", nbytes / milliseconds / 1e6)
    finally:
        if not args.folder:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "environment": environment(device),
        "settings": {
            "preset": args.preset,
            "sizes": [f"{w}x{h}" for w, h in args.sizes],
            "distinct": args.distinct,
            "photos": photos,
            "images": images,
            "runs": args.runs,
            "min_seconds": args.min_seconds,
            "iters": args.iters,
            "extraction_runs": args.extraction_runs,
            "batch": batch,
            "workers": args.workers,
            "dtype": dtype_name,
            "handoff": args.handoff,
            "overrides": overrides,
        },
        "decoding": [_clean(asdict(row)) for row in decode_rows],
        "extraction": [_clean(asdict(row)) for row in extract_rows],
        "handoff": [_clean(asdict(row)) for row in handoff_rows],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        env = result["environment"]
        where = env.get("gpu") or f"CPU ({env['processor']}), {env['cpus_available']} CPUs"
        print(
            f"{env['date']}: torch {env['torch']}, Pillow {env['pillow']} on {where}; "
            f"preset {args.preset}"
        )
        if decode_rows:
            runs, distinct = args.runs, args.distinct
            print(f"\nDecoding, one thread, median of {runs} runs over {distinct} photos:")
            print(format_decode_table(decode_rows))
        if extract_rows:
            print(f"\nExtraction, median of {args.extraction_runs} runs:")
            print(format_extract_table(extract_rows))
        if handoff_rows:
            print(
                f"\nHand-off, float32 against uint8 in the same {args.extraction_runs} run(s) "
                f"(medians; preprocessing on one thread, median of {args.runs} runs; the copy "
                "to the GPU on CUDA only):"
            )
            print(format_handoff_table(handoff_rows))
    return result


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
