"""Dense prediction on top of the heads: padding, whole and sliding-window inference, and
``Segmenter`` with the presets of the released segmentation heads."""

from dinov2_heads.dense.depther import Depther
from dinov2_heads.dense.inference import (
    DenseForward,
    InferenceSettings,
    dense_inference,
    slide_inference,
    sliding_windows,
)
from dinov2_heads.dense.label_sets import ADE20K, LABEL_SETS, VOC2012, LabelSet
from dinov2_heads.dense.padding import center_pad, center_pad_amounts, center_padding
from dinov2_heads.dense.presets import SEGMENTATION_PRESETS, SegmentationPreset, get_preset
from dinov2_heads.dense.segmentation_loss import SegmentationLoss, segmentation_loss
from dinov2_heads.dense.segmentation_metrics import SegmentationMetrics, SegmentationScores
from dinov2_heads.dense.segmenter import Segmenter

__all__ = [
    "ADE20K",
    "LABEL_SETS",
    "SEGMENTATION_PRESETS",
    "VOC2012",
    "DenseForward",
    "Depther",
    "InferenceSettings",
    "LabelSet",
    "SegmentationLoss",
    "SegmentationMetrics",
    "SegmentationPreset",
    "SegmentationScores",
    "Segmenter",
    "center_pad",
    "center_pad_amounts",
    "center_padding",
    "dense_inference",
    "get_preset",
    "segmentation_loss",
    "slide_inference",
    "sliding_windows",
]
