"""Reading checkpoints from local files and copying weights between models."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from torch import Tensor


def read_backbone_state_dict(source: str | PathLike[str] | Mapping[str, Any]) -> dict[str, Tensor]:
    """A backbone state dict in the official key layout, from a path or a mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    return dict(torch.load(source, map_location="cpu", weights_only=True, mmap=True))
