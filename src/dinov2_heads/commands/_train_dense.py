"""``dinov2-heads train`` on a store of masks or depth maps: segmentation and depth heads.

The heads of a spec (or, without ``--heads``, the head the store was extracted for) train
from the cached blocks with :class:`~dinov2_heads.training.DenseLoss` (per-pixel
cross-entropy with 255 ignored; ``DepthLoss``), the outputs resized to the stored labels, and
are scored on the validation rows with :func:`~dinov2_heads.training.evaluate_dense` next to
a constant baseline (the commonest training class everywhere; the median training depth
everywhere).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands._common import text_table
from dinov2_heads.commands._dataset_file import DATASET_FILE, print_try_next
from dinov2_heads.commands._train_job import (
    Job,
    data_summary,
    fit_heads,
    shorten,
    spec_settings,
)

if TYPE_CHECKING:
    from pathlib import Path

    from torch import Tensor, nn

    from dinov2_heads.cache import FeatureStore
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.training import DenseScores, DenseTask

#: The words a label kind goes by in messages.
_WHAT = {"segmentation": "segmentation masks", "depth": "depth maps"}
#: The head types a store of each kind trains, for messages.
_TYPES = {"segmentation": "LinearSegmentationHead", "depth": "LinearDepthHead or DPTDepthHead"}
#: The key of ``dataset.json`` (which extract writes beside a store) that records the dense head.
DENSE_HEAD_KEY = "dense_head"
#: Labels read at once when surveying masks and depth maps.
_CHUNK = 16
#: At most this many depth values go into the baseline's median.
_MEDIAN_SAMPLE = 2_000_000
IGNORE_LABEL = 255
#: The validation table's columns.
_SEGMENTATION_COLUMNS = ("mIoU", "pixel acc", "mean acc")
_DEPTH_COLUMNS = ("abs_rel", "rmse", "delta1")


def dense_columns(store: FeatureStore) -> dict[str, DenseTask]:
    """The store's label columns that are masks (``"segmentation"``) or depth maps (``"depth"``).

    A label of one integer map (H, W) per sample is a mask; a float map (1, H, W) or (H, W) a
    depth map; class indices (one per sample) are left out.
    """
    from dinov2_heads.cache.manifest import parse_dtype

    labels = store.layout.labels
    found: dict[str, DenseTask] = {}
    for column in labels.columns if labels is not None else ():
        spec = store.layout.arrays[column.array]
        floating = parse_dtype(spec.dtype).is_floating_point
        shape = tuple(spec.shape)
        if len(shape) == 2 and not floating:
            found[column.name] = "segmentation"
        elif floating and (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
            found[column.name] = "depth"
    return found


def train(
    job: Job,
    args: argparse.Namespace,
    spec: dict[str, Any] | None,
    columns: Mapping[str, DenseTask],
) -> tuple[MultiHead, dict[str, Any]]:
    """Train the dense heads of ``spec`` (or the store's own head) and score them.

    Returns the trained heads and the summary that ``results.json`` holds.
    """
    from dinov2_heads.training import DenseLoss, dense_head_loss, evaluate_dense

    source = args.heads or f"the head recorded in {job.store.path}/{DATASET_FILE}"
    if job.val_store is not None and dense_columns(job.val_store) != dict(columns):
        raise ValueError(
            f"--val {job.val_store.path} holds other labels than {job.store.path}: "
            f"{_kinds(dense_columns(job.val_store))} vs {_kinds(columns)}; extract both with "
            "--masks, or both with --depths"
        )
    spec = spec if spec is not None else default_spec(job.store, columns)
    histograms = {
        column: (_mask_histogram(job, column, True), _mask_histogram(job, column, False))
        for column, task in columns.items()
        if task == "segmentation"
    }
    heads, label_of = build_dense_heads(spec, job.store, columns, histograms, args.label, source)
    heads.to(job.device)
    _check_fits(heads, job.store, source)
    _check_mask_values(heads, label_of, histograms, job)
    settings = spec_settings(args, spec)
    batch_size = min(int(settings["batch_size"]), job.num_train)
    loader = job.loader(None, train=True, batch_size=batch_size, heads=heads)
    if len(loader) == 0:
        raise ValueError(f"no full batch of {batch_size} training samples; lower --batch-size")
    survey = {
        name: _depth_survey(job, label_of[name], heads[name], name)
        for name in heads
        if columns[label_of[name]] == "depth"
    }
    losses = {
        name: dense_head_loss(heads[name], name, **dict(head.get("loss") or {}))
        for name, head in spec["heads"].items()
    }
    loss_fn = DenseLoss(heads, losses=losses, labels=label_of).to(job.device)
    kinds = ", ".join(f"{name}: {type(head).__name__}" for name, head in heads.items())
    print(
        f"training {kinds} on {job.num_train} samples ({job.num_val} for validation), "
        f"{int(settings['epochs'])} epochs of batch {batch_size}, AdamW lr {settings['lr']}",
        flush=True,
    )
    train_loss = fit_heads(heads, loader, loss_fn, settings, progress=job.progress)
    scores = evaluate_dense(
        heads, job.loader(None, train=False, batch_size=batch_size, heads=heads), labels=label_of
    )
    baselines = {
        name: _baseline(job, heads[name], label_of[name], histograms, survey.get(name))
        for name in heads
    }
    print(f"\nvalidation on {job.num_val} samples:")
    print(_table(heads, scores, baselines))
    summary = {
        "mode": "dense",
        "store": str(job.store.path),
        "spec": spec,
        "labels": label_of,
        **data_summary(job, args),
        "epochs": int(settings["epochs"]),
        "batch_size": batch_size,
        "lr": float(settings["lr"]),
        "weight_decay": float(settings["weight_decay"]),
        "train_loss": train_loss,
        "heads": {
            name: _head_summary(head, columns[label_of[name]], scores[name], baselines[name])
            for name, head in heads.items()
        },
        "val_metrics": {name: _plain(scores[name]) for name in heads},
    }
    return heads, summary


def _kinds(columns: Mapping[str, DenseTask]) -> str:
    return ", ".join(f"{name}: {_WHAT[task]}" for name, task in columns.items()) or "class labels"


def default_spec(store: FeatureStore, columns: Mapping[str, DenseTask]) -> dict[str, Any]:
    """The head that ``extract --dense-head`` recorded in ``dataset.json``, as a spec."""
    task = next(iter(columns.values()))
    example = (
        '{"heads": {"parts": {"type": "LinearSegmentationHead", "config": {"layers": 1}}}}'
        if task == "segmentation"
        else '{"heads": {"depth": {"type": "LinearDepthHead", "config": {"max_depth": 10}}}}'
    )
    recorded = None
    path = store.path / DATASET_FILE if store.path is not None else None
    if path is not None and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8")).get(DENSE_HEAD_KEY)
    if not isinstance(recorded, dict) or "type" not in recorded:
        raise ValueError(
            f"the store at {store.path} holds {_WHAT[task]} but records no head to train; "
            f"describe the heads with --heads SPEC, such as {example}"
        )
    head = {"type": recorded["type"], "config": dict(recorded.get("config") or {})}
    return {"heads": {task: head}}


def build_dense_heads(
    spec: Mapping[str, Any],
    store: FeatureStore,
    columns: Mapping[str, DenseTask],
    histograms: Mapping[str, tuple[Tensor, Tensor]],
    label: str | None,
    source: str,
) -> tuple[MultiHead, dict[str, str]]:
    """The spec's dense heads with what the store knows filled in, and each head's label.

    Filled in unless the config gives it: the width D, and for segmentation heads K (the
    recorded class names, else the largest label in the masks + 1) and the class names.
    """
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.heads.registry import HEAD_TYPES
    from dinov2_heads.training import DENSE_TASKS

    configs: dict[str, dict[str, Any]] = {}
    label_of: dict[str, str] = {}
    for name, head in spec["heads"].items():
        kind = str(head["type"])
        task = DENSE_TASKS.get(kind)
        if task is None and kind in HEAD_TYPES:
            what = _WHAT[next(iter(columns.values()))]
            raise ValueError(
                f"{source}: head {name!r} is a {kind}, which gives one class per image, but "
                f"the store at {store.path} holds {what}; train a dense head on it ("
                f"{', '.join(sorted(DENSE_TASKS))}), or the {kind} on a store extracted from "
                "class folders or a manifest"
            )
        column = _column_of(name, head, task, columns, label, source, store)
        label_of[name] = column
        config = dict(head.get("config") or {})
        known: dict[str, Any] = {"embed_dim": store.embed_dim}
        if task == "segmentation":
            names = store.class_names.get(column)
            count = len(names) if names is not None else _largest_label(histograms[column]) + 1
            known["num_classes"] = count
            if names is not None and config.get("num_classes", count) == count:
                known["class_names"] = names
        accepted = inspect.signature(HEAD_TYPES[kind]).parameters if kind in HEAD_TYPES else {}
        for key, value in known.items():
            if key in accepted and key not in config:
                config[key] = value
        configs[name] = {"type": kind, "config": config}
    return MultiHead.from_config({"heads": configs}), label_of


def _column_of(
    name: str,
    head: Mapping[str, Any],
    task: DenseTask | None,
    columns: Mapping[str, DenseTask],
    label: str | None,
    source: str,
    store: FeatureStore,
) -> str:
    """The dense label column a head learns: its ``"label"``, its name, ``--label``, or the
    only column of its task."""
    given = head.get("label")
    candidates = [str(given)] if given is not None else [name, label]
    for column in candidates:
        if column is not None and column in columns:
            chosen = column
            break
    else:
        if given is not None:
            raise ValueError(
                f"{source}: head {name!r} learns the label {given!r}, which is not a mask or "
                f"depth map of the store at {store.path}; its dense labels are {list(columns)}"
            )
        # The columns of the head's task; with none, the mismatch is reported below.
        fitting = [column for column, kind in columns.items() if task in (None, kind)]
        fitting = fitting or list(columns)
        if len(fitting) != 1:
            raise ValueError(
                f"{source}: head {name!r} could learn any of the labels {fitting} of the store "
                f'at {store.path}; name one with "label": "{fitting[0]}"'
            )
        chosen = fitting[0]
    if task is not None and columns[chosen] != task:
        raise ValueError(
            f"{source}: head {name!r} ({head['type']}) learns {_WHAT[task]}, but the label "
            f"{chosen!r} of the store at {store.path} holds {_WHAT[columns[chosen]]}; use a "
            f"{_TYPES[columns[chosen]]}"
        )
    return chosen


def _check_fits(heads: MultiHead, store: FeatureStore, source: str) -> None:
    """Each head reads blocks the store holds and gives a map of the right channels."""
    import torch

    from dinov2_heads.training import dense_task

    depth = store.depth
    for name, head in heads.items():
        if dense_task(head) is None:
            raise ValueError(f"{source}: head {name!r} ({type(head).__name__}) is not a dense head")
        required = getattr(head, "required_blocks")  # noqa: B009 - every dense head has it
        needed = tuple(required(depth)) if depth is not None else None
        missing = [key for key in needed or () if key not in store.blocks]
        if needed is None or missing:
            layers = getattr(head, "layers", None)
            option = f" --layers {layers}" if layers is not None and layers != 1 else ""
            raise ValueError(
                f"head {name!r} ({type(head).__name__}) reads the blocks {list(needed or [])} "
                f"(index, final norm) but the store at {store.path} holds {list(store.blocks)}; "
                f"extract again with --dense-head {type(head).__name__}{option} (into a new "
                "--out, or with --overwrite)"
            )
    features = store.features(slice(0, min(2, len(store))), parts=store.parts_for(heads))
    heads.eval()
    with torch.no_grad():
        outputs = heads(features.to(next(heads.parameters()).device))
    for name, output in outputs.items():
        channels = int(getattr(heads[name], "num_classes", 1))
        if output.ndim != 4 or output.shape[1] != channels:
            raise ValueError(
                f"{source}: head {name!r} gives {tuple(output.shape)} per batch, not a map "
                f"(B, {channels}, h, w)"
            )


def _mask_histogram(job: Job, column: str, train: bool) -> Tensor:
    """Pixels per mask value 0..255 in the training (or validation) rows of ``column``."""
    import torch

    store, rows = job.store_of(train=train), job.rows_of(train=train)
    counts = torch.zeros(IGNORE_LABEL + 1, dtype=torch.int64)
    for chunk in _chunks(rows):
        masks = store.labels(chunk, column=column)
        assert not isinstance(masks, dict)
        counts += torch.bincount(masks.flatten(), minlength=IGNORE_LABEL + 1)
    return counts


def _chunks(rows: Tensor) -> list[Tensor]:
    """``rows`` in consecutive pieces of at most ``_CHUNK``."""
    return [rows[start : start + _CHUNK] for start in range(0, len(rows), _CHUNK)]


def _largest_label(histograms: tuple[Tensor, Tensor]) -> int:
    """The largest class index in the masks (255, no label, left out); 0 when none."""
    counts = (histograms[0] + histograms[1])[:IGNORE_LABEL]
    present = counts.nonzero().flatten()
    return int(present.max()) if present.numel() else 0


def _check_mask_values(
    heads: MultiHead,
    label_of: Mapping[str, str],
    histograms: Mapping[str, tuple[Tensor, Tensor]],
    job: Job,
) -> None:
    """Every mask value of a segmentation head's label is below its K, or 255."""
    for name, head in heads.items():
        column = label_of[name]
        if column not in histograms:
            continue
        classes = int(getattr(head, "num_classes"))  # noqa: B009 - segmentation heads have K
        for counts, where in zip(histograms[column], ("training", "validation"), strict=True):
            bad = counts[classes:IGNORE_LABEL].nonzero().flatten() + classes
            if bad.numel():
                values = ", ".join(str(int(v)) for v in bad[:5])
                raise ValueError(
                    f"the {where} masks of {job.store_of(train=where == 'training').path} hold "
                    f"the labels {values}, outside 0..{classes - 1} of head {name!r} (K = "
                    f"{classes}); mark pixels without a label 255, or give the head "
                    f'"num_classes": {int(bad.max()) + 1} in its config (and extract with '
                    "--class-names naming every class)"
                )


def _depth_survey(job: Job, column: str, head: nn.Module, name: str) -> float:
    """The median training depth (from at most 2 million pixels); warns about depths beyond
    the head's range, which the loss and the metrics leave out."""
    import logging

    import torch

    store, rows = job.store_of(train=True), job.rows_of(train=True)
    height, width = store.input_size or (1, 1)
    stride = max(1, math.ceil(len(rows) * height * width / _MEDIAN_SAMPLE))
    sample, valid, beyond = [], 0, 0
    top = float(getattr(head, "max_depth"))  # noqa: B009 - every depth head has it
    for chunk in _chunks(rows):
        depths = store.labels(chunk, column=column)
        assert not isinstance(depths, dict)
        known = depths[(depths > 0) & torch.isfinite(depths)]
        valid += int(known.numel())
        beyond += int((known > top).sum())
        sample.append(known[::stride])
    if valid == 0:
        raise ValueError(f"the depth maps of {store.path} hold no depth (every pixel is 0)")
    if beyond:
        logging.getLogger(__name__).warning(
            "%.1f%% of the training depths are beyond the %g m of head %r and are left out of "
            'its loss and metrics; give it "max_depth" in its config to learn them',
            100 * beyond / valid,
            top,
            name,
        )
    values = torch.cat(sample)
    values = values[values <= top]
    return float(values.median()) if values.numel() else top


def _baseline(
    job: Job,
    head: nn.Module,
    column: str,
    histograms: Mapping[str, tuple[Tensor, Tensor]],
    median: float | None,
) -> tuple[str, DenseScores]:
    """A constant prediction scored on the validation labels: (what it is, its scores)."""
    import torch

    from dinov2_heads.training import dense_metrics

    metrics = dense_metrics(head)
    if median is None:
        classes = int(getattr(head, "num_classes"))  # noqa: B009 - segmentation heads have K
        constant = int(histograms[column][0][:classes].argmax())
        names = getattr(head, "class_names", None)
        what = f"all {names[constant] if names else f'class {constant}'}"
    else:
        constant, what = median, f"all {median:.3g} m"  # type: ignore[assignment]
    store, rows = job.store_of(train=False), job.rows_of(train=False)
    for chunk in _chunks(rows):
        target = store.labels(chunk, column=column)
        assert not isinstance(target, dict)
        metrics.update(torch.full_like(target, constant), target)
    return what, metrics.compute()


def _table(
    heads: MultiHead,
    scores: Mapping[str, DenseScores],
    baselines: Mapping[str, tuple[str, DenseScores]],
) -> str:
    """One table per task: each head's validation scores and its constant baseline's."""
    from dinov2_heads.dense import SegmentationScores

    tables = []
    for segmentation in (True, False):
        names = [n for n in heads if isinstance(scores[n], SegmentationScores) == segmentation]
        if not names:
            continue
        metrics = _SEGMENTATION_COLUMNS if segmentation else _DEPTH_COLUMNS
        rows = []
        for name in names:
            what, baseline = baselines[name]
            rows.append([name, type(heads[name]).__name__, *_cells(scores[name])])
            rows.append(["  baseline", what, *_cells(baseline)])
        tables.append(text_table(["head", "type", *metrics], rows))
        tables += [str(scores[n]) for n in names if isinstance(scores[n], SegmentationScores)]
    return "\n\n".join(tables)


def _cells(scores: DenseScores) -> list[str]:
    if isinstance(scores, dict):
        return [f"{scores[key]:.3f}" for key in _DEPTH_COLUMNS]
    values = (scores.miou, scores.pixel_accuracy, scores.mean_accuracy)
    return ["-" if math.isnan(v) else f"{100 * v:.1f}%" for v in values]


def _plain(scores: DenseScores) -> dict[str, Any]:
    """Scores as JSON-able numbers (``None`` for a class that never occurs)."""
    if isinstance(scores, dict):
        return {key: _number(value) for key, value in scores.items()}
    names = scores.class_names or tuple(str(k) for k in range(len(scores.iou)))
    return {
        "miou": _number(scores.miou),
        "pixel_accuracy": _number(scores.pixel_accuracy),
        "mean_accuracy": _number(scores.mean_accuracy),
        "iou": {name: _number(v) for name, v in zip(names, scores.iou, strict=True)},
        "pixels": scores.pixels,
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _head_summary(
    head: nn.Module, task: DenseTask, scores: DenseScores, baseline: tuple[str, DenseScores]
) -> dict[str, Any]:
    described: dict[str, Any] = {"type": type(head).__name__, "task": task}
    if task == "segmentation":
        described["num_classes"] = getattr(head, "num_classes", None)
    else:
        described["depth_range"] = [getattr(head, "min_depth"), getattr(head, "max_depth")]  # noqa: B009
    described["metrics"] = _plain(scores)
    described["baseline"] = {"prediction": baseline[0], **_plain(baseline[1])}
    return described


def print_written(heads: MultiHead, heads_file: Path, results: Path, store: FeatureStore) -> None:
    """What was written, and the commands that run the heads on images."""
    from dinov2_heads.training import dense_task

    print(f"\nwrote {heads_file}:")
    for name, head in heads.items():
        names = getattr(head, "class_names", None)
        if dense_task(head) == "segmentation":
            shown = f" ({shorten(names)})" if names is not None else ""
            what = f"{int(getattr(head, 'num_classes'))} classes{shown}"  # noqa: B009
        else:
            what = f"depth {getattr(head, 'min_depth'):g}..{getattr(head, 'max_depth'):g} m"  # noqa: B009
        print(f"  {name}: {type(head).__name__}, {what}")
    print(f"wrote {results}: the settings and every head's validation results")
    print_try_next(heads_file, store.path)
