"""Where the official DINOv2 files come from, for the messages about a file that is not here.

Nothing is downloaded: the library only names the address of an official file, so that a person
can fetch it once on a machine with internet access and pass its path. The addresses follow the
official hub code: ``{base}/{backbone}/{file name}``, where ``backbone`` is the variant without
its registers (``dinov2_vits14_reg4_pretrain.pth`` lives under ``dinov2_vits14/``).
"""

from __future__ import annotations

import re
from pathlib import PurePath

__all__ = ["OFFICIAL_BASE_URL", "missing_file_advice", "official_url"]

#: The folder the official hub code downloads every DINOv2 file from.
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"

# The released files: backbones and ImageNet linear heads (with or without registers), then the
# segmentation and depth heads (released for the plain backbones only).
_OFFICIAL_NAME = re.compile(
    r"^(?P<backbone>dinov2_vit[sblg]14)"
    r"(?:(?:_reg4)?_(?:pretrain|linear_head|linear4_head)"
    r"|_(?:ade20k|voc2012)_(?:linear|ms)_head"
    r"|_(?:nyu|kitti)_(?:linear|linear4|dpt)_head)\.pth$"
)


def official_url(name: str | PurePath) -> str | None:
    """The address of an official DINOv2 file, from its name; ``None`` for any other name.

    >>> official_url("dinov2_vits14_reg4_pretrain.pth")
    'https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth'
    >>> official_url("heads.pt") is None
    True
    """
    file_name = PurePath(name).name
    match = _OFFICIAL_NAME.match(file_name)
    if match is None:
        return None
    return f"{OFFICIAL_BASE_URL}/{match['backbone']}/{file_name}"


def missing_file_advice(path: str | PurePath) -> str:
    """How to get the file at ``path`` onto this machine, said without downloading anything."""
    url = official_url(path)
    if url is None:
        return "nothing is downloaded: pass the path of a file on this machine"
    return (
        f"dinov2-heads downloads nothing: {PurePath(path).name} is an official DINOv2 file; "
        f"download it once yourself from {url} (linked from the DINOv2 repository) on a machine "
        "with internet access, copy it here and pass its path"
    )
