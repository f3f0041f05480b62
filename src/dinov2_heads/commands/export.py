"""``dinov2-heads export``: saved heads + their backbone checkpoint -> one ONNX file."""

from __future__ import annotations

import argparse
from typing import Any

from dinov2_heads.commands import _common

EXAMPLE = """\
example:
  dinov2-heads export --heads trained/heads.pt --checkpoint dinov2_vits14_pretrain.pth
  dinov2-heads export --heads heads.pt --checkpoint backbone.pth --size 224 224 --out model.onnx

One graph from images (B, 3, H, W), normalised as in training, to the logits of every head
(one output per head, named after it). Batch size and image size stay free unless a head is
built for one patch grid (Conv1dNeck), which fixes the size to the one the heads were trained
at. The file is run by onnxruntime and compared with PyTorch before the command says it is
done. Needs the ONNX packages: pip install onnx onnxscript onnxruntime.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write saved heads and their backbone as one ONNX graph, checked by onnxruntime",
        description="Export the backbone checkpoint and the heads of a heads file (from train, "
        "the demo or save_heads) as one ONNX graph for deployment.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    parser.add_argument("--heads", required=True, help="a heads file from train or save_heads")
    _common.add_backbone_arguments(parser)
    parser.add_argument("--out", default="heads.onnx", help="the .onnx file to write")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="the image size to trace with and, with --fixed-size, the only size accepted "
        "(default: the size the heads were trained at, else 224 224)",
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="fix H and W to --size (a smaller, simpler graph) instead of accepting any size",
    )
    parser.add_argument("--opset", type=_common.positive_int, default=18, help="ONNX opset")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running the file with onnxruntime and comparing it with PyTorch",
    )
    parser.add_argument(
        "--no-backbone-check",
        action="store_true",
        help="do not refuse a backbone whose weights differ from the one the heads were trained on",
    )


def run(args: argparse.Namespace) -> int:
    with _common.own_account(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from dinov2_heads.commands.predict import blocks_needed, rebuilt_heads
    from dinov2_heads.export import export_onnx, load_heads
    from dinov2_heads.features import FrozenBackbone

    checkpoint = load_heads(args.heads)
    heads = rebuilt_heads(checkpoint, args.heads)
    backbone = _common.load_backbone(args)
    if not args.no_backbone_check:
        checkpoint.check_backbone(backbone)
    frozen = FrozenBackbone(backbone, n_last_blocks=blocks_needed(checkpoint, heads))
    heads.to(next(backbone.parameters()).device)
    size = tuple(args.size) if args.size is not None else checkpoint.input_size
    result = export_onnx(
        frozen,
        heads,
        args.out,
        dynamic_size=False if args.fixed_size else None,
        input_size=size,
        opset=args.opset,
        verify=not args.no_verify,
    )
    height, width = result.input_size
    sizes = "any H, W that are multiples of 14" if result.dynamic_size else f"{height}x{width}"
    batch = "any batch size" if result.dynamic_batch else "batch size 1"
    print(f"wrote {result.path}")
    print(f"  input   {result.input_name}: float (B, 3, H, W), normalised; {sizes}, {batch}")
    for name in result.output_names:
        print(f"  output  {name}: logits (B, K)")
    if result.max_abs_diff is not None:
        worst = max(result.max_abs_diff.values())
        print(
            f"  checked with onnxruntime on {len(result.checked_shapes)} input shape(s): largest "
            f"difference from PyTorch {worst:.1e}"
        )
    return 0
