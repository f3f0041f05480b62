"""A file of heads given where a backbone checkpoint belongs: what it is and where it goes.

Every loader of backbones reads through :func:`~dinov2_heads.checkpoints.read_backbone`; when
the names there fit no backbone layout, :func:`heads_as_backbone_error` looks for the head
files people mistake for one, so the Python API and the command line name the file the same way:

- a heads file written by ``save_heads`` (``dinov2-heads train``'s ``heads.pt``): its heads and
  the backbone they were trained on; it goes to ``load_heads`` or ``--heads``;
- a released DINOv2 ImageNet linear head (``dinov2_vits14_linear_head.pth``): the
  ``LinearHead`` that loads it and the backbone files of its width;
- a released segmentation head (``dinov2_vits14_ade20k_linear_head.pth``): the call that loads
  it (:func:`~dinov2_heads.checkpoints.identify_head_file`);
- a released depth head (``dinov2_vits14_nyu_linear4_head.pth``, ``..._kitti_dpt_head.pth``):
  the ``LinearDepthHead`` or ``DPTDepthHead`` call that loads it, and the backbone file of its
  width.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dinov2_heads.checkpoints.errors import CheckpointError, UnknownFormatError
from dinov2_heads.checkpoints.folders import CheckpointFiles
from dinov2_heads.checkpoints.head_files import identify_head_file
from dinov2_heads.checkpoints.released_depth import identify_released_depth_head
from dinov2_heads.checkpoints.released_linear import identify_released_linear_head
from dinov2_heads.checkpoints.saved_heads import saved_heads_metadata
from dinov2_heads.checkpoints.unwrap import unwrap_quietly

__all__ = ["heads_as_backbone_error"]

_NOT_A_BACKBONE = "not a backbone checkpoint: pass the DINOv2 backbone checkpoint"


def heads_as_backbone_error(
    content: Mapping[str, Any], files: CheckpointFiles | None
) -> UnknownFormatError | None:
    """The error that names ``content`` as a head file given for a backbone, or ``None``.

    Args:
        content: What was read (or given in memory), before unwrapping.
        files: The files it was read from; ``None`` for a mapping.
    """
    single = files.weights[0] if files is not None and len(files.weights) == 1 else None
    where = str(files.source) if files is not None else "the mapping given"
    metadata = saved_heads_metadata(content, single)
    if metadata is not None:
        return UnknownFormatError(_saved_heads_message(where, metadata, files is not None))
    linear = identify_released_linear_head(content)
    if linear is not None:
        return UnknownFormatError(
            f"{where} holds {linear.contents()}, {_NOT_A_BACKBONE} instead (for D = "
            f"{linear.embed_dim}: {linear.backbone_files()}), and load this file with "
            f"{linear.recipe()}; save_heads then writes a heads file for load_heads and "
            "--heads (docs/migrating.md)"
        )
    try:
        state_dict = unwrap_quietly(content, backbone=False).state_dict
    except CheckpointError:
        return None
    dense = identify_head_file(state_dict, Path(where).name)
    if dense is not None:
        return UnknownFormatError(
            f"{where} is a released DINOv2 segmentation head ({dense.description}, "
            f"{dense.num_classes} classes), {_NOT_A_BACKBONE} instead, and load this file with "
            f"{dense.load}{_command_line(f'dinov2-heads segment --heads {where}', files)}"
        )
    depth = identify_released_depth_head(state_dict, Path(where).name)
    if depth is not None:
        backbone = depth.backbone_file()
        trained_on = f" ({backbone} for D = {depth.embed_dim})" if backbone else ""
        return UnknownFormatError(
            f"{where} is a released DINOv2 depth head ({depth.description()}), "
            f"{_NOT_A_BACKBONE}{trained_on} instead, and load this file with {depth.load()}"
            f"{_command_line(f'dinov2-heads depth --head {where}', files)}"
        )
    return None


def _saved_heads_message(where: str, metadata: Mapping[str, Any], from_file: bool) -> str:
    heads = metadata.get("heads")
    names = ", ".join(str(name) for name in heads) if isinstance(heads, Mapping) else ""
    backbone = metadata.get("backbone")
    variant = backbone.get("variant") if isinstance(backbone, Mapping) else None
    held = [f"heads: {names}"] if names else []
    held += [f"trained on {variant}"] if isinstance(variant, str) else []
    described = f" ({'; '.join(held)})" if held else ""
    command_line = f" (on the command line: --heads {where}, with the backbone as --checkpoint)"
    return (
        f"{where} is a heads file written by save_heads{described}, {_NOT_A_BACKBONE} the "
        "heads were trained on instead, and load this file with dinov2_heads.load_heads"
        f"{command_line if from_file else ''}"
    )


def _command_line(command: str, files: CheckpointFiles | None) -> str:
    return f" (on the command line: {command})" if files is not None else ""
