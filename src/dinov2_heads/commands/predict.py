"""``dinov2-heads predict``: saved heads + a backbone checkpoint + images -> labels."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common, _dense_heads

if TYPE_CHECKING:
    from torch import nn

    from dinov2_heads.data import Preprocess
    from dinov2_heads.export import HeadCheckpoint
    from dinov2_heads.heads import MultiHead, Prediction

logger = logging.getLogger(__name__)

EXAMPLE = """\
example:
  dinov2-heads predict --heads heads.pt --checkpoint dinov2_vits14_pretrain.pth car.jpg
  dinov2-heads predict --heads heads.safetensors --checkpoint backbone.pth --top-k 3 crops/
  dinov2-heads predict --heads heads.pt --checkpoint backbone.pth --json photos/ > labels.json

The heads file is one written by dinov2-heads train, the demo or save_heads. Images are
prepared as the heads were trained: the preprocessing recorded in the file (extra
"preprocessing"), else a resize to the recorded input size; --preset or --size override that.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="label images with saved heads on a backbone checkpoint",
        description="Label images with heads saved by save_heads: class names and "
        "probabilities per head, as a table or JSON.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument("--heads", required=True, help="a head checkpoint from save_heads")
    _common.add_backbone_arguments(parser)
    _common.add_size_arguments(
        parser,
        default=None,
        default_text="as the heads were trained: the preset or size recorded in the heads file",
    )
    parser.add_argument(
        "--top-k", type=_common.positive_int, default=1, help="classes to show per head"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--batch-size", type=_common.positive_int, default=32, help="images per backbone call"
    )
    _common.add_backbone_check_argument(parser)
    _common.add_on_error_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from dinov2_heads.data import load_batch
    from dinov2_heads.export import load_heads
    from dinov2_heads.features import FrozenBackbone
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.progress import Progress

    checkpoint = load_heads(args.heads)
    every = _dense_heads.members(rebuilt_heads(checkpoint, args.heads), checkpoint.head_names)
    left_out = _left_out(args, checkpoint, every)
    names = [name for name in checkpoint.head_names if name not in left_out]
    heads = MultiHead({name: every[name] for name in names})
    backbone = _common.load_backbone(args)
    _common.check_backbone(args, checkpoint, backbone)
    frozen = FrozenBackbone(backbone, n_last_blocks=blocks_needed(checkpoint, heads))
    heads.to(next(backbone.parameters()).device)
    transform = _transform(args, checkpoint)
    paths = _common.image_paths(args.images)
    top_k = {name: min(args.top_k, _num_classes(checkpoint, name)) for name in names}

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with Progress(len(paths), "predicting", enabled=not args.quiet) as bar:
        for chunk in _common.batched(paths, args.batch_size):
            bar.update(len(chunk))
            try:
                batch = load_batch(chunk, transform, on_error=args.on_error)
            except ValueError:
                if args.on_error != "skip":
                    raise
                # Every image of this chunk was unreadable; each was already logged.
                skipped += [{"path": str(path), "reason": "unreadable"} for path in chunk]
                continue
            skipped += [{"path": str(r.path), "reason": r.reason} for r in batch.skipped]
            with torch.no_grad():
                features = frozen(batch.images.to(next(backbone.parameters()).device))
            rows += _rows(batch.paths, _predict(heads, features, top_k))

    if args.json:
        printed = {"predictions": rows, "skipped": skipped, "left_out": list(left_out.values())}
        print(json.dumps(printed, indent=2, ensure_ascii=False))
    else:
        print(_table(rows, names))
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s), listed in the log")
    return 0


def _left_out(
    args: argparse.Namespace, checkpoint: HeadCheckpoint, heads: Mapping[str, nn.Module]
) -> dict[str, dict[str, str]]:
    """The segmentation and depth heads, each with the command that runs it; logged.

    Predict labels whole images. A file of dense heads only is refused with the commands
    that run them; from a file that also holds classifiers, those are predicted and each
    dense head is named in a warning (and in the JSON) with its command.
    """
    dense = _dense_heads.dense_heads(heads)
    several = len(heads) > 1
    commands = {
        name: _dense_heads.run_command(
            args, task, name, pick=several, input_size=checkpoint.input_size
        )
        for name, task in dense.items()
    }
    if dense and len(dense) == len(heads):
        held = " and ".join(
            f"{task} head {name!r} ({_dense_heads.ANSWERS[task]})"
            if several
            else f"a {task} head ({_dense_heads.ANSWERS[task]})"
            for name, task in dense.items()
        )
        raise ValueError(
            f"{args.heads} holds {held}: predict labels whole images with classifier heads; "
            f"run {' and '.join(commands.values())}"
        )
    for name, task in dense.items():
        logger.warning(
            "left out %s head %r (%s): predict labels whole images; run it with %s",
            task,
            name,
            _dense_heads.ANSWERS[task],
            commands[name],
        )
    return {
        name: {"head": name, "task": task, "command": commands[name]}
        for name, task in dense.items()
    }


def _predict(heads: MultiHead, features: Any, top_k: Mapping[str, int]) -> dict[str, Prediction]:
    from dinov2_heads.heads import predict

    return {
        name: _single(predict(head, features, top_k=top_k[name])) for name, head in heads.items()
    }


def _single(prediction: Prediction | dict[str, Prediction]) -> Prediction:
    if isinstance(prediction, dict):
        raise TypeError("a head returned several outputs; predict expects one logits tensor")
    return prediction


def rebuilt_heads(checkpoint: HeadCheckpoint, path: str) -> Any:
    """The heads of ``checkpoint``, or an error when only the user's own code can build them."""
    if checkpoint.heads is None:
        kinds = sorted({str(spec.get("type")) for spec in checkpoint.metadata["heads"].values()})
        raise ValueError(
            f"{path} holds heads of type {', '.join(kinds)}, which only your own code can "
            "build; load them with load_heads(...).load_into(your_module) in Python"
        )
    return checkpoint.heads


def blocks_needed(checkpoint: HeadCheckpoint, heads: Any) -> int:
    """How many of the last blocks the frozen backbone must return for these heads."""
    blocks = [int(getattr(module, "n_blocks", 1)) for module in heads.modules()]
    return max([checkpoint.n_last_blocks or 1, *blocks])


def _num_classes(checkpoint: HeadCheckpoint, name: str) -> int:
    spec = checkpoint.metadata["heads"][name]
    return int(spec.get("num_classes") or 1)


def _transform(args: argparse.Namespace, checkpoint: HeadCheckpoint) -> Preprocess:
    from dinov2_heads.data import Preprocess, list_presets

    recorded = checkpoint.extra.get("preprocessing")
    if isinstance(recorded, str) and recorded in list_presets():
        default: Preprocess | str = recorded
    elif isinstance(recorded, dict) and recorded.get("type") == "Preprocess":
        # The full description a feature store keeps (dinov2-heads train passes it on).
        fields: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in recorded.items()
            if key != "type"
        }
        default = Preprocess(**fields)
    elif checkpoint.input_size is not None:
        default = Preprocess(resize=checkpoint.input_size)
    else:
        default = "official_eval"
    return _common.preprocessing(args, default)


def _rows(paths: Sequence[Path], per_head: Mapping[str, Prediction]) -> list[dict[str, Any]]:
    rows = []
    for index, path in enumerate(paths):
        heads = {}
        for name, prediction in per_head.items():
            labels = prediction.names[index] if prediction.names is not None else None
            heads[name] = [
                {
                    "label": labels[rank] if labels is not None else str(int(class_index)),
                    "index": int(class_index),
                    "probability": round(float(score), 4),
                }
                for rank, (class_index, score) in enumerate(
                    zip(prediction.indices[index], prediction.scores[index], strict=True)
                )
            ]
        rows.append({"path": str(path), "heads": heads})
    return rows


def _table(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    return _common.text_table(
        ["image", *names],
        (
            [str(row["path"])]
            + [
                ", ".join(f"{top['label']} {top['probability']:.2f}" for top in row["heads"][name])
                for name in names
            ]
            for row in rows
        ),
    )
