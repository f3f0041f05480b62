"""``dinov2-heads train``: a feature store with labels -> a heads file and ``results.json``."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common, _train_dense
from dinov2_heads.commands._dataset_file import print_try_next
from dinov2_heads.commands._train_job import (
    DEFAULTS,
    Job,
    data_summary,
    fit_heads,
    shorten,
    spec_settings,
    split_rows,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from dinov2_heads.cache import FeatureStore
    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.heads import MultiHead

logger = logging.getLogger(__name__)

EXAMPLE = """\
example:
  dinov2-heads train features/train --out trained
  dinov2-heads train features/train --val features/val --label colour --out colour-probe
  dinov2-heads train features/attributes --heads heads.json --epochs 20 --out attributes

Without --heads: the official grid of linear heads (13 learning rates x the last 1 or 4 blocks
x avgpool on/off: 52 heads when the store holds 4 blocks, 26 with one) trained in one pass on
one label column; the table is printed and the best head on the validation data is kept, with
its class names. With --heads SPEC: a MultiHead described in a JSON (or TOML) file, such as

  {"heads": {"colour": {"type": "LinearHead"},
             "brand": {"type": "Conv1dNeck", "config": {"dropout": 0.5}}},
   "epochs": 10, "lr": 0.001}

Each head learns the label column of its name ("label": "column" names another); its width,
class count, class names and patch grid come from the store unless the config gives them.
Validation data: --val (a store of the same backbone) or a random --val-fraction of STORE.
Writes OUT/heads.pt (or .safetensors), which predict and export read, and OUT/results.json.

A store of masks or depth maps (extract --masks / --depths) trains dense heads instead: the
head it was extracted for, or a spec of LinearSegmentationHead (per-pixel cross-entropy, 255
ignored), LinearDepthHead or DPTDepthHead (DepthLoss) heads, with "loss" settings per head:

  {"heads": {"parts": {"type": "LinearSegmentationHead", "config": {"layers": 4},
                       "loss": {"class_weights": [0.2, 1, 1, 1, 1]}}}}

validated by mIoU and pixel accuracy, or AbsRel, RMSE and delta1, next to a constant baseline;
segment and depth run the written heads file.
"""

#: What the command line prints after "interrupted" on Ctrl-C.
ON_INTERRUPT = (
    "nothing was saved; run the same command again to train from the start (the features "
    "stay in the store: nothing is extracted again)"
)

#: Keys a spec file may hold at its top level and for each head.
SPEC_KEYS = ("heads", "epochs", "batch_size", "lr", "weight_decay")
HEAD_KEYS = ("type", "config", "label", "loss")
#: The grid's defaults: the official recipe's epochs, and its reference batch.
GRID_EPOCHS = 10
GRID_BATCH_SIZE = 256
#: The file names written inside --out.
RESULTS_FILE = "results.json"


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train heads on a feature store: the grid of linear heads, a MultiHead spec, or "
        "segmentation and depth heads",
        description="Train heads on the features of a feature store (dinov2-heads extract) and "
        "write them, with their class names and the backbone they belong to, as one file that "
        "predict and export read.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("store", metavar="STORE", help="a feature store folder with labels")
    parser.add_argument("--out", required=True, help="folder for heads.pt and results.json")
    parser.add_argument(
        "--heads",
        metavar="SPEC",
        help="a JSON or TOML file describing a MultiHead to train (default: the grid of linear "
        "heads; on a store of masks or depth maps, the head it was extracted for)",
    )
    parser.add_argument(
        "--label",
        metavar="COLUMN",
        help="the label column the grid learns (needed when the store has several)",
    )
    parser.add_argument(
        "--val",
        metavar="STORE",
        help="a feature store to validate on (default: a random --val-fraction of STORE)",
    )
    parser.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.2,
        help="share of STORE held out for validation when --val is not given",
    )
    parser.add_argument(
        "--epochs",
        type=_common.positive_int,
        help=f"passes over the training features (default: the spec's, else {GRID_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size",
        type=_common.positive_int,
        help=f"samples per optimizer step (default: the spec's, else {GRID_BATCH_SIZE} for the "
        f"grid and {DEFAULTS['batch_size']} for a spec; at most the training samples)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        help=f"AdamW learning rate of a spec's heads (default: the spec's, else "
        f"{DEFAULTS['lr']}); the grid uses the official learning rates",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the order")
    parser.add_argument(
        "--format",
        choices=("pt", "safetensors"),
        default="pt",
        help="the heads file's format: heads.pt or heads.safetensors",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to train: cpu, cuda, cuda:1, ... (auto: cuda if available)",
    )


def run(args: argparse.Namespace) -> int:
    with _common.own_account(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from dinov2_heads.cache import FeatureStore

    store = FeatureStore.open(args.store)
    val_store = FeatureStore.open(args.val) if args.val is not None else None
    if val_store is not None:
        _check_same_features(store, val_store)
    if not store.has_labels:
        raise ValueError(
            f"the feature store at {args.store} has no labels; extract a folder with one "
            "sub-folder per class, a manifest with label columns, or images with --masks or "
            "--depths"
        )
    train_rows, val_rows = split_rows(len(store), val_store, args.val_fraction, args.seed)
    device = _common.device(args.device)
    out = _common.make_output_folder(args.out)
    torch.manual_seed(args.seed)
    progress = not args.quiet
    job = Job(store, val_store, train_rows, val_rows, device, args.seed, progress)
    dense = _train_dense.dense_columns(store)
    if dense:
        spec = read_spec(args.heads) if args.heads is not None else None
        heads, summary = _train_dense.train(job, args, spec, dense)
        # One dense head is saved alone, so that export --whole-image takes the file too.
        saved: nn.Module = heads[next(iter(heads))] if len(heads) == 1 else heads
    elif args.heads is None:
        heads, summary = _train_grid(job, args)
    else:
        heads, summary = _train_spec(job, args)
    if not dense:
        saved = heads

    from dinov2_heads.atomic import atomic_write_bytes
    from dinov2_heads.export import save_heads

    scores = "val_metrics" if dense else "val_accuracy"
    heads_file = out / f"heads.{args.format}"
    save_heads(
        heads_file,
        saved,
        backbone=_backbone_stand_in(store),
        input_size=store.input_size,
        backbone_fingerprint=store.fingerprint,
        extra={
            "made_by": "dinov2-heads train",
            "preprocessing": store.manifest.preprocessing,
            "store": str(store.path),
            scores: summary[scores],
        },
    )
    summary["files"] = {"heads": str(heads_file), "results": str(out / RESULTS_FILE)}
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(out / RESULTS_FILE, text.encode("utf-8"))
    if dense:
        _train_dense.print_written(heads, heads_file, out / RESULTS_FILE, store)
    else:
        _print_written(heads, heads_file, out / RESULTS_FILE, store)
    return 0


def _print_written(heads: MultiHead, heads_file: Path, results: Path, store: FeatureStore) -> None:
    print(f"\nwrote {heads_file}:")
    for name, head in heads.items():
        names = getattr(head, "class_names", None)
        shown = f" ({shorten(names)})" if names is not None else ""
        classes = int(getattr(head, "num_classes", 0))
        print(f"  {name}: {type(head).__name__}, {classes} classes{shown}")
    print(f"wrote {results}: the settings and every head's validation results")
    print_try_next(heads_file, store.path)


# ---------------------------------------------------------------------------- the grid


def _train_grid(job: Job, args: argparse.Namespace) -> tuple[MultiHead, dict[str, Any]]:
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid

    store = job.store
    column = _grid_label(store, args.label)
    names = store.class_names.get(column)
    num_classes = len(names) if names is not None else _num_classes(store, column)
    blocks = (1, 4) if store.n_blocks >= 4 else tuple(sorted({1, store.n_blocks}))
    grid = LinearProbeGrid(store.embed_dim, num_classes, n_blocks=blocks, class_names=names).to(
        job.device
    )
    epochs = args.epochs or GRID_EPOCHS
    batch_size = min(args.batch_size or GRID_BATCH_SIZE, job.num_train)
    note = (
        ""
        if store.n_blocks >= 4
        else (
            f" (the store holds the last {store.n_blocks} block(s); extract with "
            "--n-last-blocks 4 for the official 52)"
        )
    )
    print(
        f"training {len(grid)} linear heads{note} on {column}: "
        f"{num_classes} classes, {job.num_train} training and {job.num_val} validation "
        f"samples, {epochs} epochs of batch {batch_size}",
        flush=True,
    )
    fit_grid(
        grid,
        job.loader(column, train=True, batch_size=batch_size, heads=grid),
        epochs=epochs,
        seed=job.seed,
        progress=job.progress,
    )
    results = evaluate_grid(grid, job.loader(column, train=False, batch_size=256, heads=grid))
    print(f"\nvalidation accuracy of every head, best first ({results.rows[0].count} samples):")
    print(results.table())
    best = results.best
    print(
        f"\nbest: {best.spec.name} ({100 * best.accuracy:.1f}% on validation; chance "
        f"{100 / num_classes:.1f}%)"
    )
    summary = {
        "mode": "grid",
        "store": str(store.path),
        "label": column,
        "num_classes": num_classes,
        "class_names": list(names) if names is not None else None,
        **data_summary(job, args),
        "epochs": epochs,
        "batch_size": batch_size,
        "best": {"name": best.spec.name, "index": best.index, "accuracy": best.accuracy},
        "val_accuracy": {column: best.accuracy},
        "grid": results.to_dicts(),
    }
    return MultiHead({column: grid.best(results)}), summary


def _grid_label(store: FeatureStore, label: str | None) -> str:
    """The label the grid learns: ``--label``, or the store's only one."""
    names = store.label_names
    if label is None:
        if len(names) == 1:
            return names[0]
        raise ValueError(
            f"the store at {store.path} has the label columns {', '.join(names)}; choose the "
            f"one the grid learns with --label, e.g. --label {names[0]} (or train them all "
            "at once with --heads SPEC)"
        )
    if label not in names:
        raise ValueError(
            f"--label {label} is not a label of the store at {store.path}; it has "
            f"{', '.join(names)}"
        )
    return label


# ---------------------------------------------------------------------------- a spec


def _train_spec(job: Job, args: argparse.Namespace) -> tuple[MultiHead, dict[str, Any]]:
    from dinov2_heads.heads import MultiHeadLoss

    spec = read_spec(args.heads)
    store = job.store
    heads, label_of = build_heads(spec, store, args.heads)
    heads.to(job.device)
    _dry_run(heads, store, job.device, args.heads)
    settings = spec_settings(args, spec)
    epochs = int(settings["epochs"])
    batch_size = min(int(settings["batch_size"]), job.num_train)
    kinds = ", ".join(
        f"{name}: {type(head).__name__}({getattr(head, 'num_classes', '?')})"
        for name, head in heads.items()
    )
    print(
        f"training a MultiHead ({kinds}) on {job.num_train} samples ({job.num_val} for "
        f"validation), {epochs} epochs of batch {batch_size}, AdamW lr {settings['lr']}",
        flush=True,
    )
    loader = job.loader(None, train=True, batch_size=batch_size, heads=heads)
    if len(loader) == 0:
        raise ValueError(f"no full batch of {batch_size} training samples; lower --batch-size")
    fit_heads(
        heads,
        loader,
        MultiHeadLoss(),
        settings,
        progress=job.progress,
        batches=lambda batches: _renamed(batches, label_of),
    )
    accuracy, counts = _evaluate(
        heads, job.loader(None, train=False, batch_size=256, heads=heads), label_of
    )
    print("\nvalidation accuracy per head:")
    print(_accuracy_table(heads, accuracy, counts))
    summary = {
        "mode": "spec",
        "store": str(store.path),
        "spec": spec,
        "labels": label_of,
        **data_summary(job, args),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(settings["lr"]),
        "weight_decay": float(settings["weight_decay"]),
        "heads": {
            name: {
                "type": type(head).__name__,
                "num_classes": getattr(head, "num_classes", None),
                "accuracy": accuracy[name],
                "count": counts[name],
            }
            for name, head in heads.items()
        },
        "val_accuracy": accuracy,
    }
    return heads, summary


def read_spec(path: str) -> dict[str, Any]:
    """The spec file as a dict: JSON, or TOML for a ``.toml`` file; its keys checked."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no heads spec file at {source}")
    text = source.read_text(encoding="utf-8")
    try:
        spec = _toml(text) if source.suffix.lower() == ".toml" else json.loads(text)
    except ValueError as error:
        kind = "TOML" if source.suffix.lower() == ".toml" else "JSON"
        raise ValueError(f"{source} is not valid {kind}: {error}") from None
    example = '{"heads": {"colour": {"type": "LinearHead"}}}'
    if not isinstance(spec, dict) or not isinstance(spec.get("heads"), dict) or not spec["heads"]:
        raise ValueError(f"{source} must describe its heads as {example}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; a spec holds {', '.join(SPEC_KEYS)}"
        )
    for name, head in spec["heads"].items():
        if not isinstance(head, dict) or "type" not in head:
            raise ValueError(f"{source}: head {name!r} needs a type, as in {example}")
        extra = sorted(set(head) - set(HEAD_KEYS))
        if extra:
            raise ValueError(
                f"{source}: head {name!r} has unknown key(s) {', '.join(extra)}; a head holds "
                f"{', '.join(HEAD_KEYS)} (its arguments go in config)"
            )
    return spec


def _toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError(
                "TOML spec files need Python 3.11 or tomli (pip install tomli); or write the "
                "spec as JSON"
            ) from None
    return tomllib.loads(text)


def build_heads(
    spec: Mapping[str, Any], store: FeatureStore, source: str = "the spec"
) -> tuple[MultiHead, dict[str, str]]:
    """The spec's MultiHead, with what the store knows filled into each head's config.

    Returns the heads and, for each head, the label column it learns.
    """
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.heads.registry import HEAD_TYPES
    from dinov2_heads.training import DENSE_TASKS

    columns = store.label_names
    configs: dict[str, dict[str, Any]] = {}
    label_of: dict[str, str] = {}
    for name, head in spec["heads"].items():
        if str(head["type"]) in DENSE_TASKS:
            raise ValueError(
                f"{source}: head {name!r} is a {head['type']}, a dense head, but the store at "
                f"{store.path} holds a class per image; dense heads train on a store of masks "
                "or depth maps: extract it with --masks FOLDER or --depths FOLDER"
            )
        if "loss" in head:
            raise ValueError(
                f"{source}: head {name!r} has loss settings, which dense heads (segmentation, "
                "depth) take on a store of masks or depth maps; leave them out for a classifier"
            )
        column = str(head.get("label", name))
        if column not in columns:
            raise ValueError(
                f"head {name!r} learns the label column {column!r}, which the store at "
                f"{store.path} lacks; its columns are {', '.join(columns)} (name the head after "
                'one, or give it "label": "column")'
            )
        label_of[name] = column
        config = dict(head.get("config") or {})
        kind = HEAD_TYPES.get(str(head["type"]))
        if kind is not None:
            names = store.class_names.get(column)
            known: dict[str, Any] = {
                "embed_dim": store.embed_dim,
                "num_classes": len(names) if names is not None else _num_classes(store, column),
                "class_names": names,
                "num_patches": store.grid,
            }
            accepted = inspect.signature(kind).parameters
            for key, value in known.items():
                if key in accepted and key not in config and value is not None:
                    config[key] = value
        configs[name] = {"type": head["type"], "config": config}
    return MultiHead.from_config({"heads": configs}), label_of


def _dry_run(heads: MultiHead, store: FeatureStore, device: torch.device, spec: str) -> None:
    """Run each head on two samples, so that a head the store cannot feed fails now."""
    import torch

    rows = slice(0, min(2, len(store)))
    features = store.features(rows, parts=store.parts_for(heads)).to(device)
    heads.eval()
    for name, head in heads.items():
        try:
            with torch.no_grad():
                output = head(features)
        except (ValueError, TypeError, RuntimeError) as error:
            message = str(error).splitlines()[0] if str(error) else repr(error)
            hint = (
                "; extract with --keep patch_tokens"
                if "patch token" in message and "patch_tokens" not in store.keep
                else ""
            )
            raise ValueError(
                f"head {name!r} of {spec} cannot read the features of {store.path}: {message}{hint}"
            ) from error
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                f"head {name!r} of {spec} gives {shape} per batch, not logits (B, K), and the "
                f"store at {store.path} holds a class per image; dense heads (segmentation, "
                "depth) train on a store of masks or depth maps: extract it with --masks FOLDER "
                "or --depths FOLDER"
            )


def _renamed(batches: Any, label_of: Mapping[str, str]) -> Iterator[tuple[Any, dict[str, Tensor]]]:
    """The batches with their label columns named after the heads that learn them.

    A store with one label tensor (a class-folder extraction) yields it alone: every head
    learns that one label.
    """
    for features, labels in batches:
        if isinstance(labels, Mapping):
            yield features, {name: labels[column] for name, column in label_of.items()}
        else:
            yield features, dict.fromkeys(label_of, labels)


def _evaluate(
    heads: MultiHead, batches: Any, label_of: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, int]]:
    import torch

    correct = dict.fromkeys(label_of, 0)
    counts = dict.fromkeys(label_of, 0)
    device = next(heads.parameters()).device
    with torch.no_grad():
        for features, labels in _renamed(batches, label_of):
            outputs = heads(features.to(device))
            for name, logits in outputs.items():
                target = labels[name].to(device)
                known = target >= 0
                correct[name] += int((logits.argmax(dim=-1)[known] == target[known]).sum())
                counts[name] += int(known.sum())
    accuracy = {name: correct[name] / counts[name] if counts[name] else math.nan for name in counts}
    return accuracy, counts


def _accuracy_table(
    heads: MultiHead, accuracy: Mapping[str, float], counts: Mapping[str, int]
) -> str:
    width = max(len("head"), *(len(name) for name in heads))
    lines = [
        f"{'head':<{width}}  {'type':<10}  {'classes':>7}  {'accuracy':>8}  {'chance':>6}  "
        f"{'samples':>7}"
    ]
    for name, head in heads.items():
        classes = int(getattr(head, "num_classes", 0))
        chance = f"{100 / classes:>5.1f}%" if classes else "     -"
        lines.append(
            f"{name:<{width}}  {type(head).__name__:<10}  {classes:>7}  "
            f"{100 * accuracy[name]:>7.1f}%  {chance}  {counts[name]:>7}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- shared


def _num_classes(store: FeatureStore, column: str) -> int:
    """K from the labels themselves (largest label + 1), when no class names are recorded."""
    labels = store.labels(slice(None), column=column)
    assert not isinstance(labels, Mapping)
    if labels.is_floating_point():
        raise ValueError(
            f"the labels {column!r} of the store at {store.path} are not class indices "
            f"(dtype {labels.dtype}); train these with your own loop"
        )
    known = labels[labels >= 0]
    if known.numel() == 0:
        raise ValueError(f"the label column {column!r} of the store at {store.path} is empty")
    return int(known.max()) + 1


def _check_same_features(store: FeatureStore, val_store: FeatureStore) -> None:
    pairs: Sequence[tuple[str, Any, Any]] = (
        ("backbone weights (fingerprint)", store.fingerprint, val_store.fingerprint),
        ("width D", store.embed_dim, val_store.embed_dim),
        ("blocks", store.n_blocks, val_store.n_blocks),
        ("patch grid", store.grid, val_store.grid),
        ("labels", store.label_names, val_store.label_names),
        (
            "preprocessing",
            store.manifest.preprocessing,
            val_store.manifest.preprocessing,
        ),
    )
    for what, mine, theirs in pairs:
        if mine != theirs:
            raise ValueError(
                f"--val {val_store.path} differs from {store.path} in its {what}: {theirs} vs "
                f"{mine}; extract both with the same backbone and options"
            )


def _backbone_stand_in(store: FeatureStore) -> FrozenBackbone | None:
    """The store's backbone as a weightless module, for ``save_heads`` to describe.

    The store records the backbone's configuration and weights fingerprint but not its
    weights; a backbone built on the meta device carries the same variant, configuration and
    block count without memory, and the fingerprint is passed on from the store.
    """
    import torch

    from dinov2_heads.backbone import BackboneConfig, DinoVisionTransformer
    from dinov2_heads.features import FrozenBackbone

    described = store.manifest.backbone
    config = described.config
    if not isinstance(config, Mapping):
        return None
    fields: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in config.items()
    }
    with torch.device("meta"):
        backbone = DinoVisionTransformer(BackboneConfig(**fields))
    dtype = getattr(torch, str(described.weights_dtype or "float32"), None)
    stored = dtype if isinstance(dtype, torch.dtype) and dtype != torch.float32 else None
    return FrozenBackbone(backbone, n_last_blocks=store.n_blocks, dtype=stored)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
