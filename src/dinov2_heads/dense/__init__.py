"""Dense prediction on top of the heads: padding, whole and sliding-window inference."""

from dinov2_heads.dense.depther import Depther
from dinov2_heads.dense.inference import (
    DenseForward,
    InferenceSettings,
    dense_inference,
    slide_inference,
    sliding_windows,
)
from dinov2_heads.dense.padding import center_pad, center_pad_amounts, center_padding

__all__ = [
    "DenseForward",
    "Depther",
    "InferenceSettings",
    "center_pad",
    "center_pad_amounts",
    "center_padding",
    "dense_inference",
    "slide_inference",
    "sliding_windows",
]
