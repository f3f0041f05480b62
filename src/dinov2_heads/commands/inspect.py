"""``dinov2-heads inspect``: what a checkpoint file, model folder, released head file, heads file
or store holds."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

EXAMPLE = """\
example:
  dinov2-heads inspect dinov2_vits14_pretrain.pth
  dinov2-heads inspect teacher_checkpoint.pth --json
  dinov2-heads inspect runs/heads.pt
  dinov2-heads inspect dinov2_vits14_nyu_linear4_head.pth
  dinov2-heads inspect dinov2-base/
  dinov2-heads inspect ~/.cache/huggingface/hub/models--facebook--dinov2-base
  dinov2-heads inspect features/train --verify
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="describe a checkpoint: format, variant, parameters, dtype, unwrapped containers; "
        "or a released head file, a heads file or a feature store",
        description=(
            "Describe a DINOv2 checkpoint file or Hugging Face model folder (sharded or not, or "
            "a cache repo) without building a model; a released DINOv2 head file (ImageNet "
            "linear, segmentation or depth: its type, width, blocks, classes or depth bins and "
            "range, and the call that loads it); a heads file written by save_heads or "
            "dinov2-heads train (each head's type, task, classes or depth range and input, the "
            "backbone it was trained on, the recorded metrics and the commands that use it); "
            "or a feature store folder.\n\n" + EXAMPLE
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "checkpoint",
        help="a .pth, .pt, .bin or .safetensors file, a model folder, or its *.index.json; a "
        "released head file (*_head.pth); a heads file (dinov2-heads train's heads.pt); or a "
        "feature store folder (dinov2-heads extract --out)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="for a feature store: check every data file's size and sha256 against its manifest",
    )


def run(args: argparse.Namespace) -> int:
    from dinov2_heads.cache.manifest import is_store_manifest
    from dinov2_heads.checkpoints import describe_checkpoint
    from dinov2_heads.checkpoints.saved_heads import is_saved_heads_file
    from dinov2_heads.commands._dataset_file import checkpoint_argument
    from dinov2_heads.export import describe_heads

    if is_store_manifest(args.checkpoint):
        return _inspect_store(args)
    if args.verify:
        raise ValueError(
            f"--verify checks a feature store folder (made by dinov2-heads extract); "
            f"{args.checkpoint} is not one"
        )

    # Only the marks are read (a .pt file is mapped): milliseconds for a backbone of any size.
    if is_saved_heads_file(args.checkpoint):
        heads = describe_heads(args.checkpoint)
        # Heads trained by dinov2-heads train name their store, whose dataset.json may name
        # the backbone checkpoint: then the commands say it instead of BACKBONE.
        store = heads.extra.get("store")
        checkpoint = checkpoint_argument(Path(store)) if isinstance(store, str) else None
        heads = dataclasses.replace(heads, checkpoint=checkpoint)
        print(json.dumps(heads.to_dict(), indent=2) if args.json else str(heads))
        return 0
    summary = describe_checkpoint(args.checkpoint)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else str(summary))
    return 0


def _inspect_store(args: argparse.Namespace) -> int:
    """Describe (and with ``--verify`` check) the feature store at ``args.checkpoint``."""
    from dinov2_heads.cache import FeatureStore

    store = FeatureStore.open(args.checkpoint, allow_incomplete=True)
    if args.json:
        print(json.dumps(store.manifest.to_json(), indent=2))
    else:
        print(store)
        for label, names in store.class_names.items():
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            print(f"  {label}: {len(names)} classes ({shown})")
    if args.verify:
        checked = store.verify()
        what = "sizes and sha256" if checked.checksums else "sizes (no checksums recorded)"
        print(f"verified {len(checked.files)} files ({checked.nbytes} bytes): {what} match")
    return 0
