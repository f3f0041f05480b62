"""``dinov2-heads depth``: a depth head + a backbone checkpoint + images -> depth pictures."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinov2_heads.commands import _common, _dense
from dinov2_heads.commands._dense_heads import pick_dense_head

if TYPE_CHECKING:
    from torch import nn

    from dinov2_heads.export import HeadCheckpoint

logger = logging.getLogger(__name__)

#: What Ctrl-C leaves: every file is written to a temporary file, then renamed.
ON_INTERRUPT = (
    "the pictures (and .npy files) written before are complete (no file is left half "
    "written); run the same command again with --overwrite to write them all"
)

EXAMPLE = """\
example:
  dinov2-heads depth --checkpoint dinov2_vits14_pretrain.pth \\
      --head dinov2_vits14_nyu_dpt_head.pth --out depth/ room.jpg
  dinov2-heads depth --checkpoint backbone.pth --head my_depth_head.pt --out depth/ \\
      --mode slide --crop-size 352 704 --stride 176 352 --flip --save-npy street/

--head takes a released DINOv2 depth head (dinov2_{arch}_{nyu,kitti}_{linear,linear4,dpt}
_head.pth: its kind is read from its tensors, and DPT heads get max depth 80 m from "kitti" in
the file name, else 10 m) or a depth head saved with save_heads, such as the heads.pt of
dinov2-heads train (--heads is the same option; --head-name picks one of several heads). Images
run at their own size unless --size is given (Depther pads them to multiples of 14). For each
image OUT/<name>.png shows the image beside its depth with a colour bar in metres.
"""


def add_parser(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "depth",
        help="estimate depth in metres with a depth head on a backbone checkpoint",
        description="Write a colour-mapped depth picture (with a colour bar in metres) for each "
        "image, using a released DINOv2 depth head or your own.\n\n" + EXAMPLE,
        formatter_class=formatter,
    )
    _common.add_images_argument(parser)
    parser.add_argument(
        "--head",
        "--heads",
        dest="head",
        required=True,
        help="a released *_head.pth depth head or a save_heads file (train's heads.pt)",
    )
    parser.add_argument(
        "--head-name", help="with a save_heads file of several heads: the depth head"
    )
    _common.add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the pictures")
    parser.add_argument(
        "--max-depth",
        type=float,
        help="the head's largest depth in metres (default: 80 for linear heads and KITTI "
        "DPT heads, 10 for other DPT heads)",
    )
    _dense.add_window_arguments(parser, preset=False)
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="resize every image to H x W first"
    )
    parser.add_argument(
        "--colourmap", default="magma", help="magma, viridis, inferno or gray (near is bright)"
    )
    parser.add_argument("--vmax", type=float, help="the far end of the colour bar (metres)")
    parser.add_argument(
        "--save-npy", action="store_true", help="also write the depth in metres as <name>.npy"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _dense.add_overwrite_argument(parser)
    _common.add_backbone_check_argument(parser)
    _common.add_on_error_argument(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dinov2_heads.data import UnreadableImageError, load_image, pil_to_tensor
    from dinov2_heads.data.functional import resize
    from dinov2_heads.dense import Depther
    from dinov2_heads.viz import save_depth_picture

    out = _common.check_output_folder(args.out)
    paths = _common.image_paths(args.images)
    suffixes = (".png", ".npy") if args.save_npy else (".png",)
    names = _dense.output_names(paths, suffixes)
    _dense.refuse_existing(
        out, [name + suffix for name in names for suffix in suffixes], overwrite=args.overwrite
    )
    backbone = _common.load_backbone(args)
    where = next(backbone.parameters()).device
    saved = saved_heads(args.head)
    if saved is not None:
        _common.check_backbone(args, saved, backbone)
    head = load_depth_head(
        saved or args.head, backbone.embed_dim, args.max_depth, head_name=args.head_name
    ).to(where)
    depther = Depther(backbone, head, **_dense.window_settings(args)).eval()
    _common.make_output_folder(out)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path, name in zip(paths, names, strict=True):
        try:
            image = pil_to_tensor(load_image(path))
        except UnreadableImageError as error:
            if args.on_error != "skip":
                raise
            logger.warning("skipped %s: %s", path, error.reason)
            skipped.append({"path": str(path), "reason": error.reason})
            continue
        if args.size is not None:
            image = resize(image, (args.size[0], args.size[1]))
        # uint8 pixels (the resize keeps them uint8): the Depther normalises them on its
        # device with ImageNet's mean and std, a quarter of the bytes to copy, the same depth.
        with torch.no_grad():
            depth = depther(image[None])[0]
        picture = save_depth_picture(
            out / f"{name}.png", depth, image, colourmap=args.colourmap, vmax=args.vmax
        )
        row: dict[str, Any] = {"path": str(path), "picture": str(picture)}
        if args.save_npy:
            array_path = out / f"{name}.npy"
            _save_npy(array_path, depth[0].cpu().numpy().astype(np.float32))
            row["npy"] = str(array_path)
        values = depth.flatten()
        row.update(
            {
                "min": round(float(values.min()), 4),
                "median": round(float(values.median()), 4),
                "max": round(float(values.max()), 4),
            }
        )
        rows.append(row)

    if args.json:
        print(json.dumps({"depth": rows, "skipped": skipped}, indent=2, ensure_ascii=False))
    else:
        print(_table(rows))
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s), listed in the log")
    return 0


def saved_heads(path: str | Path) -> HeadCheckpoint | None:
    """The heads of a file written by :func:`save_heads`, or ``None`` for another kind of file
    (a released head)."""
    from dinov2_heads.export import load_heads

    try:
        return load_heads(path)
    except (ValueError, KeyError, TypeError):
        return None


def load_depth_head(
    path: str | Path | HeadCheckpoint,
    embed_dim: int,
    max_depth: float | None = None,
    *,
    head_name: str | None = None,
) -> nn.Module:
    """A depth head from a released ``*_head.pth`` file or a :func:`save_heads` file.

    A released file is recognised by
    :func:`~dinov2_heads.checkpoints.released_depth.identify_released_depth_head`, the one
    that names such a file given as a backbone: DPT keys, or ``conv_depth`` reading ``2 * D``
    (linear, the last block) or ``8 * D`` channels (linear4), D and the blocks from the shapes
    and the released file name (``vits14``, ``linear4``), else from ``embed_dim``; a head for
    another width is refused. Linear heads have bins up to 80 m, as the hub builds them; DPT
    heads 80 m when "kitti" is in the file name, else 10 m. ``max_depth`` overrides either. A
    save_heads file (or what :func:`saved_heads` read from one) keeps its heads' own range;
    from a ``MultiHead`` its one depth head is taken, or the one called ``head_name``.
    """
    from dinov2_heads.checkpoints import load_partial, read_checkpoint, unwrap_state_dict
    from dinov2_heads.checkpoints.released_depth import identify_released_depth_head
    from dinov2_heads.export import HeadCheckpoint
    from dinov2_heads.heads import DPTDepthHead, LinearDepthHead

    saved: HeadCheckpoint | None
    if isinstance(path, HeadCheckpoint):
        saved, file = path, path.path or Path("the heads file")
    else:
        file = Path(path)
        saved = saved_heads(file)
    if saved is not None:
        if saved.heads is None:
            raise ValueError(
                f"{file} holds heads this library cannot rebuild; load them in Python with "
                "load_heads(...).load_into(your_module)"
            )
        return _saved_depth_head(saved.heads, file, head_name)
    stored = unwrap_state_dict(read_checkpoint(file), backbone=False).state_dict
    released = identify_released_depth_head(stored, file.name)
    if released is None:
        raise ValueError(
            f"{file} is not a DINOv2 depth head: it has neither a linear head's conv_depth "
            "tensors nor a DPT head's reassemble_blocks, convs, fusion_blocks and project "
            "tensors; pass a *_linear_head.pth, *_linear4_head.pth or *_dpt_head.pth file"
        )
    # What the file is, as the message for a heads file given as a backbone says; the
    # backbone only settles the width and blocks the file leaves open.
    released = released.for_backbone(embed_dim, str(file))
    head: nn.Module
    if released.head_type == "DPTDepthHead":
        head = DPTDepthHead(
            embed_dim, channels=released.channels, max_depth=max_depth or released.max_depth
        )
    else:
        # for_backbone settled the blocks; a linear head always has its bins.
        assert released.layers is not None
        assert released.n_bins is not None
        head = LinearDepthHead(
            embed_dim,
            layers=released.layers,
            n_bins=released.n_bins,
            max_depth=max_depth or released.max_depth,
        )
    state = {key.removeprefix(released.prefix): value for key, value in stored.items()}
    report = load_partial(head, state, strict=True)
    logger.info("loaded %s as %s (%s)", file, type(head).__name__, report.summary())
    return head.eval()


def _saved_depth_head(heads: nn.Module, file: Path, head_name: str | None) -> nn.Module:
    """The one depth head of a save_heads file (``head_name`` picks it among several)."""
    _, head = pick_dense_head(heads, file, head_name, "depth")
    return head.eval()


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    from dinov2_heads.atomic import atomic_path

    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["image", "min m", "median m", "max m", "picture"]
    return _common.text_table(
        header,
        (
            [
                row["path"],
                f"{row['min']:.3g}",
                f"{row['median']:.3g}",
                f"{row['max']:.3g}",
                row["picture"],
            ]
            for row in rows
        ),
    )
