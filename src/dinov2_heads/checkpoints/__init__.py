"""Reading DINOv2 checkpoints from local files, converting them, and copying weights.

- :func:`load_backbone`: any DINOv2 checkpoint -> a working backbone, architecture inferred.
- :func:`create_backbone` and the hub-named builders (:func:`dinov2_vits14`, ...): an official
  variant by name, with local weights that must fit it.
- :func:`describe_checkpoint`: what a checkpoint holds, as a table or as data.
- :func:`read_checkpoint`: a file, a (sharded) Hugging Face model folder or cache repo -> mapping.
- :func:`load_partial`: copy every matching tensor into a module and report the rest.
- :func:`compare_state_dicts`, :func:`check_fit`: the one comparison of names and shapes that
  every loader uses; a misfit is an :class:`ArchitectureMismatchError`.
- :func:`convert_huggingface`, :func:`convert_timm`: pure state-dict converters.
"""

from dinov2_heads.checkpoints.architecture import infer_config
from dinov2_heads.checkpoints.builders import (
    WeightsSource,
    create_backbone,
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
)
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
from dinov2_heads.checkpoints.fit import (
    ShapeMismatch,
    StateDictFit,
    check_fit,
    compare_state_dicts,
)
from dinov2_heads.checkpoints.folders import (
    CheckpointFiles,
    find_checkpoint_files,
    read_checkpoint,
)
from dinov2_heads.checkpoints.formats import CheckpointFormat, Converted, detect_format, to_official
from dinov2_heads.checkpoints.head_files import HeadFileSummary, identify_head_file
from dinov2_heads.checkpoints.huggingface import convert_huggingface
from dinov2_heads.checkpoints.huggingface_config import HuggingFaceConfig
from dinov2_heads.checkpoints.integrity import verify_checkpoint_file
from dinov2_heads.checkpoints.loading import (
    BackboneWeights,
    backbone_from_weights,
    load_backbone,
    read_backbone,
    read_backbone_state_dict,
)
from dinov2_heads.checkpoints.partial import LoadReport, load_partial
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
    "HeadFileSummary",
    "HuggingFaceConfig",
    "LoadReport",
    "PartialLoadError",
    "ShapeMismatch",
    "StateDictFit",
    "UnknownFormatError",
    "UnsafeCheckpointError",
    "Unwrapped",
    "WeightsSource",
    "backbone_from_weights",
    "check_fit",
    "compare_state_dicts",
    "convert_huggingface",
    "convert_timm",
    "create_backbone",
    "describe_checkpoint",
    "detect_format",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "find_checkpoint_files",
    "identify_head_file",
    "infer_config",
    "load_backbone",
    "load_partial",
    "read_backbone",
    "read_backbone_state_dict",
    "read_checkpoint",
    "read_checkpoint_file",
    "to_official",
    "unwrap_state_dict",
    "verify_checkpoint_file",
]
