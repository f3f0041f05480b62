"""Files written by ``save_heads``, recognised below the export layer that writes and reads them.

A heads file is a ``.pt`` file holding ``{"format": HEADS_FORMAT, "metadata": JSON, "state_dict":
...}`` or a ``.safetensors`` file whose header metadata holds the JSON under
:data:`HEADS_METADATA_KEY` (see :mod:`dinov2_heads.export.heads_checkpoint`). The loaders of
backbones use :func:`saved_heads_metadata` to say so when one is given in a backbone's place;
:func:`is_saved_heads_file` tells ``dinov2-heads inspect`` to describe one instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dinov2_heads.checkpoints.errors import CheckpointError, CheckpointFileError
from dinov2_heads.checkpoints.reading import read_checkpoint_file, sniff_file_kind
from dinov2_heads.checkpoints.safetensors_file import read_metadata

__all__ = ["HEADS_FORMAT", "HEADS_METADATA_KEY", "is_saved_heads_file", "saved_heads_metadata"]

#: The ``format`` field of every heads file.
HEADS_FORMAT = "dinov2-heads/heads"
#: The key of a heads file's metadata in a safetensors header.
HEADS_METADATA_KEY = "dinov2_heads"


def saved_heads_metadata(content: Mapping[str, Any], file: Path | None) -> dict[str, Any] | None:
    """The metadata of a heads file, or ``None`` when ``content`` is not one.

    Args:
        content: The mapping read from the file (or given in memory).
        file: The one file it was read from, whose safetensors header may mark it; ``None``
            for a mapping or several shards.

    Returns:
        The stored metadata as JSON-decoded, unchecked (``{}`` when it is not a JSON object):
        for naming the file in a message, not for loading it.
    """
    if content.get("format") == HEADS_FORMAT:
        return _decoded(content.get("metadata"))
    if file is None:
        return None
    try:
        if sniff_file_kind(file) != "safetensors":
            return None
        header = read_metadata(file)
    except (CheckpointError, CheckpointFileError):
        return None
    if HEADS_METADATA_KEY not in header:
        return None
    return _decoded(header[HEADS_METADATA_KEY])


def is_saved_heads_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` carries the marks of a heads file written by ``save_heads``.

    Only the marks are read (the ``format`` entry of a ``.pt`` file, mapped rather than read;
    the header of a ``.safetensors`` file), not checked: a damaged heads file is still one, and
    ``load_heads`` says what is wrong with it. A folder, a missing or unreadable file is not one.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        return False
    try:
        # A safetensors file's marks are in its header, which saved_heads_metadata reads.
        safetensors = sniff_file_kind(file) == "safetensors"
        content = {} if safetensors else read_checkpoint_file(file, mmap=True)
    except (CheckpointError, CheckpointFileError):
        return False
    return saved_heads_metadata(content, file if safetensors else None) is not None


def _decoded(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}
