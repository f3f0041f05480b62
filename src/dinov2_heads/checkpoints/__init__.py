"""Reading checkpoints from local files and copying weights between models."""

from dinov2_heads.checkpoints.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointFileError,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    Dinov2HeadsError,
    PartialLoadError,
    UnknownFormatError,
    UnsafeCheckpointError,
)
from dinov2_heads.checkpoints.loading import read_backbone_state_dict
from dinov2_heads.checkpoints.partial import LoadReport, ShapeMismatch, load_partial
from dinov2_heads.checkpoints.reading import read_checkpoint_file
from dinov2_heads.checkpoints.unwrap import Unwrapped, unwrap_state_dict

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointError",
    "CheckpointFileError",
    "CheckpointIsADirectoryError",
    "CheckpointNotFoundError",
    "Dinov2HeadsError",
    "LoadReport",
    "PartialLoadError",
    "ShapeMismatch",
    "UnknownFormatError",
    "UnsafeCheckpointError",
    "Unwrapped",
    "load_partial",
    "read_backbone_state_dict",
    "read_checkpoint_file",
    "unwrap_state_dict",
]
