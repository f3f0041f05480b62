"""From a checkpoint source to a backbone state dict in the official layout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from dinov2_heads.checkpoints.reading import read_checkpoint_file
from dinov2_heads.checkpoints.unwrap import unwrap_state_dict

#: A checkpoint path or an in-memory state dict (or a container around one).
CheckpointSource = str | os.PathLike[str] | Mapping[str, Any]


def read_backbone_state_dict(source: CheckpointSource) -> dict[str, Tensor]:
    """A backbone state dict in the official key layout, from a path or a mapping."""
    content = source if isinstance(source, Mapping) else read_checkpoint_file(source)
    return unwrap_state_dict(content).state_dict
