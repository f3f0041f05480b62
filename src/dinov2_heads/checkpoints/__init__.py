"""Reading DINOv2 checkpoints from local files, converting them, and copying weights.

- :func:`load_backbone`: any DINOv2 checkpoint -> a working backbone, architecture inferred.
- :func:`describe_checkpoint`: what a checkpoint holds, as a table or as data.
- :func:`read_checkpoint`: a file, a (sharded) Hugging Face model folder or cache repo -> mapping.
- :func:`load_partial`: copy every matching tensor into a module and report the rest.
- :func:`convert_huggingface`, :func:`convert_timm`: pure state-dict converters.
"""

from dinov2_heads.checkpoints.architecture import infer_config
from dinov2_heads.checkpoints.describe import CheckpointSummary, describe_checkpoint
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
from dinov2_heads.checkpoints.folders import (
    CheckpointFiles,
    find_checkpoint_files,
    read_checkpoint,
)
from dinov2_heads.checkpoints.formats import CheckpointFormat, Converted, detect_format, to_official
from dinov2_heads.checkpoints.huggingface import convert_huggingface
from dinov2_heads.checkpoints.huggingface_config import HuggingFaceConfig
from dinov2_heads.checkpoints.loading import (
    BackboneWeights,
    load_backbone,
    read_backbone,
    read_backbone_state_dict,
)
from dinov2_heads.checkpoints.partial import LoadReport, ShapeMismatch, load_partial
from dinov2_heads.checkpoints.reading import read_checkpoint_file
from dinov2_heads.checkpoints.timm import convert_timm
from dinov2_heads.checkpoints.unwrap import Unwrapped, unwrap_state_dict

__all__ = [
    "ArchitectureMismatchError",
    "BackboneWeights",
    "CheckpointError",
    "CheckpointFileError",
    "CheckpointFiles",
    "CheckpointFormat",
    "CheckpointIsADirectoryError",
    "CheckpointNotFoundError",
    "CheckpointSummary",
    "Converted",
    "Dinov2HeadsError",
    "HuggingFaceConfig",
    "LoadReport",
    "PartialLoadError",
    "ShapeMismatch",
    "UnknownFormatError",
    "UnsafeCheckpointError",
    "Unwrapped",
    "convert_huggingface",
    "convert_timm",
    "describe_checkpoint",
    "detect_format",
    "find_checkpoint_files",
    "infer_config",
    "load_backbone",
    "load_partial",
    "read_backbone",
    "read_backbone_state_dict",
    "read_checkpoint",
    "read_checkpoint_file",
    "to_official",
    "unwrap_state_dict",
]
