"""Heads that read :class:`~dinov2_heads.features.Features`, their losses and predictions."""

from dinov2_heads.heads.class_names import ClassNamesMixin
from dinov2_heads.heads.conv1d_neck import Conv1dNeck
from dinov2_heads.heads.depth_losses import DepthLoss, DepthLossOutput, GradientLoss, SigLoss
from dinov2_heads.heads.dpt_depth import DPTDepthHead
from dinov2_heads.heads.linear import LinearHead, linear_input
from dinov2_heads.heads.linear_depth import LinearDepthHead
from dinov2_heads.heads.linear_segmentation import LinearSegmentationHead
from dinov2_heads.heads.losses import IGNORE_INDEX, HeadLoss, LossOutput, MultiHeadLoss, head_loss
from dinov2_heads.heads.multi import MultiHead
from dinov2_heads.heads.predict import Prediction, predict, predict_logits
from dinov2_heads.heads.registry import (
    HEAD_TYPES,
    build_head,
    head_spec,
    head_type_name,
    registered_type_name,
)

__all__ = [
    "HEAD_TYPES",
    "IGNORE_INDEX",
    "ClassNamesMixin",
    "Conv1dNeck",
    "DPTDepthHead",
    "DepthLoss",
    "DepthLossOutput",
    "GradientLoss",
    "HeadLoss",
    "LinearDepthHead",
    "LinearHead",
    "LinearSegmentationHead",
    "LossOutput",
    "MultiHead",
    "MultiHeadLoss",
    "Prediction",
    "SigLoss",
    "build_head",
    "head_loss",
    "head_spec",
    "head_type_name",
    "linear_input",
    "predict",
    "predict_logits",
    "registered_type_name",
]
