"""``dinov2-heads export``: saved heads + their backbone checkpoint -> one ONNX file."""

from __future__ import annotations

import argparse
from typing import Any

from dinov2_heads.commands import _common

EXAMPLE = """\
example:
  dinov2-heads export --heads trained/heads.pt --checkpoint dinov2_vits14_pretrain.pth
  dinov2-heads export --heads heads.pt --checkpoint backbone.pth --size 224 224 --out model.onnx
  dinov2-heads export --heads depth.pt --checkpoint backbone.pth --whole-image --out depther.onnx
  dinov2-heads export --heads heads.pt --checkpoint backbone.pth --whole-image --head-name depth

One graph from images (B, 3, H, W), normalised as in training, to the output of every head
(one per head, named after it): logits (B, K) of a classifier, logits (B, K, h, w) on the
patch grid of a segmentation head (h = H/14, w = W/14), depth in metres (B, 1, 4h, 4w) of a
linear depth head; the command prints each output's shape. Batch size and image size stay
free unless a head is built for one patch grid (Conv1dNeck), which fixes the size to the one
the heads were trained at. The file is run by onnxruntime and compared with PyTorch before
the command says it is done, on grids of an odd and an even number of patches each way.
--whole-image turns one depth or segmentation head into a whole Depther or Segmenter that
takes images of any size; from a file of several heads it takes the one dense head, or the
one --head-name names, as segment and depth do. Needs the ONNX packages: pip install
'dinov2-heads[export]', or from a checkout of the repository pip install -e '.[export]'.
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
    parser.add_argument(
        "--whole-image",
        action="store_true",
        help="for a depth or segmentation head (the file's one, or --head-name's): export "
        "the whole Depther or Segmenter "
        "(centre padding, head, depth clamp, resize to the input size, softmax), a graph that "
        "takes images of any size and returns per-pixel depth in metres or class "
        "probabilities at that size",
    )
    parser.add_argument(
        "--head-name",
        help="with --whole-image and a heads file of several heads: the depth or segmentation "
        "head to export (needed when the file holds more than one)",
    )
    parser.add_argument("--opset", type=_common.positive_int, default=18, help="ONNX opset")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running the file with onnxruntime and comparing it with PyTorch",
    )
    _common.add_backbone_check_argument(parser)


def run(args: argparse.Namespace) -> int:
    with _common.own_account(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from dinov2_heads.commands.predict import blocks_needed, rebuilt_heads
    from dinov2_heads.export import export_onnx, load_heads
    from dinov2_heads.features import FrozenBackbone

    _common.check_output_file(args.out, "heads.onnx")
    if args.head_name is not None and not args.whole_image:
        raise ValueError(
            f"--head-name picks the head of a --whole-image graph; without --whole-image every "
            f"head of {args.heads} is exported. Add --whole-image to export head "
            f"{args.head_name!r} as a whole Depther or Segmenter, or leave out --head-name"
        )
    checkpoint = load_heads(args.heads)
    heads = rebuilt_heads(checkpoint, args.heads)
    backbone = _common.load_backbone(args)
    _common.check_backbone(args, checkpoint, backbone)
    if args.whole_image:
        return _whole_image(args, heads, backbone)
    # Dense heads read chosen blocks (a depth head's without the final norm): one pass serves all.
    frozen = FrozenBackbone.for_heads(
        backbone, heads, n_last_blocks=blocks_needed(checkpoint, heads)
    )
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
    for name, layout in result.output_layouts.items():
        print(f"  output  {name}: {layout.describe()}")
    if result.max_abs_diff is not None:
        worst = max(result.max_abs_diff.values())
        print(
            f"  checked with onnxruntime on {len(result.checked_shapes)} input shape(s): largest "
            f"difference from PyTorch {worst:.1e}"
        )
    return 0


def _whole_image(args: argparse.Namespace, heads: Any, backbone: Any) -> int:
    """Export one dense head of the file as the whole Depther or Segmenter around it."""
    from dinov2_heads.commands._dense_heads import dense_heads, pick_dense_head
    from dinov2_heads.dense import Depther, Segmenter
    from dinov2_heads.export import export_dense_onnx
    from dinov2_heads.heads import MultiHead
    from dinov2_heads.training import dense_task

    if args.fixed_size:
        raise ValueError(
            "--whole-image graphs take any image size; leave out --fixed-size (--size only "
            "sets the size to trace with)"
        )
    several = isinstance(heads, MultiHead)
    if not dense_heads(dict(heads.items()) if several else {"head": heads}):
        if several:
            kinds = ", ".join(f"{name}: {type(head).__name__}" for name, head in heads.items())
            held = f"{len(heads)} heads ({kinds}), which give"
        else:
            held = f"a {type(heads).__name__}, which gives"
        raise ValueError(
            f"--whole-image exports a depth or segmentation head (a type in DENSE_TASKS), "
            f"{args.heads} holds {held} one answer per image; export it without --whole-image"
        )
    # As segment and depth choose: the one dense head, or the one --head-name names.
    name, head = pick_dense_head(heads, args.heads, args.head_name)
    task = dense_task(head)
    is_depth = task == "depth"
    predictor = Depther(backbone, head) if is_depth else Segmenter(backbone, head)
    head.to(next(backbone.parameters()).device)
    result = export_dense_onnx(
        predictor,
        args.out,
        input_size=tuple(args.size) if args.size is not None else None,
        opset=args.opset,
        verify=not args.no_verify,
    )
    batch = "any batch size" if result.dynamic_batch else "batch size 1"
    (output,) = result.output_names
    what = "depth in metres (B, 1, H, W)" if is_depth else "class probabilities (B, K, H, W)"
    print(f"wrote {result.path}")
    if several:
        print(f"  head    {name}: {type(head).__name__}, one of the {len(heads)} in {args.heads}")
    print(f"  input   {result.input_name}: float (B, 3, H, W), normalised; any H, W, {batch}")
    print(f"  output  {output}: {what} at the input size")
    if result.max_abs_diff is not None:
        print(
            f"  checked with onnxruntime on {len(result.checked_shapes)} input shape(s): largest "
            f"difference from PyTorch {result.max_abs_diff[output]:.1e}"
        )
    return 0
